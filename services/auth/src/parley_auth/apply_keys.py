"""Auth's projection of keys: signing and audit keys, and the E2EE device keys."""

from __future__ import annotations

from parley.auth.v1.events_pb2 import (
    AuditKeyPublished,
    DeviceKeysPublished,
    DeviceRemoved,
    OneTimeKeyClaimed,
    OneTimeKeysUploaded,
    SigningKeyPublished,
    SigningKeyRetired,
)

from parley_auth import keys
from parley_auth.applying import Recorded, applier_table
from parley_auth.auth_state import AuthState
from parley_auth.key_rotation import SigningKeyState
from parley_core.same_named import same_named

APPLIERS, applies = applier_table()


# -- signing and audit keys -------------------------------------------------------------------------


@applies(AuditKeyPublished)
def _audit_key(p: AuthState, event: AuditKeyPublished, at: Recorded) -> None:
    p.published_keys.append(event)
    p.audit_keys.add(event.key_id)


@applies(SigningKeyPublished)
def _signing_key_published(p: AuthState, event: SigningKeyPublished, at: Recorded) -> None:
    p.published_keys.append(event)
    p.signing_keys.setdefault(event.key_id, SigningKeyState(at.at, replaces=event.replaces_key_id))
    _signing_key_subject_changed(p, at)


@applies(SigningKeyRetired)
def _signing_key_retired(p: AuthState, event: SigningKeyRetired, at: Recorded) -> None:
    if (retired := p.signing_keys.get(event.key_id)) is not None:
        retired.retired = True
    _signing_key_subject_changed(p, at)


def _signing_key_subject_changed(p: AuthState, at: Recorded) -> None:
    # A successor is published on the subject of the key it replaces.
    if (subject_key := p.signing_keys.get(at.aggregate_id)) is not None:
        subject_key.last_seq, subject_key.version = at.stream_seq, subject_key.version + 1


# -- E2EE device keys ------------------------------------------------------------------------------


@applies(DeviceKeysPublished)
def _device_published(p: AuthState, event: DeviceKeysPublished, at: Recorded) -> None:
    device = keys.DeviceRecord(**same_named(event, *keys.DEVICE_FIELDS))
    p.keys.devices[(event.user_id, event.device_id)] = device
    device.last_seq, device.version = at.stream_seq, device.version + 1


@applies(DeviceRemoved)
def _device_removed(p: AuthState, event: DeviceRemoved, at: Recorded) -> None:
    p.keys.devices.pop((event.user_id, event.device_id), None)
    p.keys.removed.add((event.user_id, event.device_id))


@applies(OneTimeKeysUploaded)
def _keys_uploaded(p: AuthState, event: OneTimeKeysUploaded, at: Recorded) -> None:
    if (device := p.keys.get(event.user_id, event.device_id)) is None:
        return
    for k in event.keys:
        device.unclaimed[k.key_id] = keys.StoredKey(k.key_id, k.key, k.signature)
        device.seen_key_ids.add(k.key_id)
    if event.HasField("fallback_key"):
        fb = event.fallback_key
        device.fallback = keys.StoredKey(fb.key_id, fb.key, fb.signature)
        device.seen_key_ids.add(fb.key_id)
    device.last_seq, device.version = at.stream_seq, device.version + 1


@applies(OneTimeKeyClaimed)
def _key_claimed(p: AuthState, event: OneTimeKeyClaimed, at: Recorded) -> None:
    if (device := p.keys.get(event.user_id, event.device_id)) is None:
        return
    device.unclaimed.pop(event.key_id, None)
    device.last_seq, device.version = at.stream_seq, device.version + 1

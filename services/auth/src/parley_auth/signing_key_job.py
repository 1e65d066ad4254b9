"""The access-token signing keys' job: the key this instance signs with, its publication, its
rotation on schedule (PARLEY_AUTH_SIGNING_KEY_ROTATION_SECONDS) and the retirement of replaced
keys once every token they signed has expired. When is decided in key_rotation.py (no I/O); this
module reads and writes the key files and appends the events.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path

from google.protobuf.message import Message
from parley.auth.v1.events_pb2 import SigningKeyPublished, SigningKeyRetired

from parley_auth.audit_trail import AuditTrail
from parley_auth.key_files import SIGNING_KEY_FILE, successor_key_file
from parley_auth.key_rotation import KeySchedule, SigningKeyState, key_in_use, replaced_at
from parley_auth.sealing import SealedFieldUnreadable, SecretSealer
from parley_auth.signing import TokenIssuer
from parley_core.actor import Actor
from parley_core.bus import EventBus
from parley_core.envelope import NewEvent
from parley_core.errors import FailedPrecondition, Unavailable
from parley_core.event_log import NEW, ChangedMeanwhile, EventLog, Position
from parley_core.jobs import every
from parley_core.tokens import ALGORITHM
from parley_core.topology import signing_key_subject

log = logging.getLogger(__name__)

# The signing-key schedule is re-read at least this often, and after a failure not sooner than:
KEY_MAINTENANCE_MAX_WAIT_S = 3600.0
KEY_MAINTENANCE_RETRY_S = 5.0
# A rotation's successor carries its private key sealed under this field name (SecretSealer).
SEALED_SIGNING_KEY_FIELD = "signing_private_key"


class SigningKeyJob:
    """`load` before the AUTH replay (a successor published by another instance is adopted as
    the replay applies it, `saw`), `connect` after it, then `publish_first` and `start`."""

    def __init__(self, keys: dict[str, SigningKeyState], *, rotation_s: float, token_lifetime_s: int) -> None:
        self.schedule = KeySchedule(rotation_s=rotation_s, token_lifetime_s=token_lifetime_s)
        self._keys = keys  # the projection's
        self._token_lifetime_s = token_lifetime_s
        # Rotates the key on schedule and retires replaced keys once every token they signed has
        # expired. Times come from the AUTH stream, so a restart keeps the schedule; woken when the
        # keys change, else at the next due time (re-read at least hourly, retried after a failure).
        self._job = every(
            self._next_due_s,
            self._chores,
            name="auth-signing-keys",
            after_failure=KEY_MAINTENANCE_RETRY_S,
        )
        self._issuer: TokenIssuer | None = None
        self._secrets_dir = Path()
        self._sealer: SecretSealer | None = None
        self._connected: tuple[EventBus, EventLog, AuditTrail] | None = None

    def load(self, secrets_dir: Path, sealer: SecretSealer) -> None:
        """The key in the secrets folder; `sealer` opens a successor published on another host."""
        self._secrets_dir, self._sealer = secrets_dir, sealer
        self._issuer = TokenIssuer.load_or_create(self._signing_key_path, lifetime_s=self._token_lifetime_s)

    def connect(self, bus: EventBus, events: EventLog, audit: AuditTrail) -> None:
        self._connected = (bus, events, audit)

    @property
    def issuer(self) -> TokenIssuer:
        """What this instance signs access tokens with now."""
        assert self._issuer is not None, "the signing key is loaded at start"
        return self._issuer

    @property
    def events(self) -> EventLog:
        assert self._connected is not None
        return self._connected[1]

    @property
    def audit(self) -> AuditTrail:
        assert self._connected is not None
        return self._connected[2]

    def saw(self, payload: Message) -> None:
        """An AUTH event applied: a key change wakes the job, and a successor of our key is adopted."""
        if isinstance(payload, SigningKeyPublished):
            self._adopt_successor(payload)
        if isinstance(payload, SigningKeyPublished | SigningKeyRetired):
            self._job.wake()

    def start(self) -> None:
        self._job.start()

    async def stop(self) -> None:
        await self._job.stop()

    @property
    def _signing_key_path(self) -> Path:
        return self._secrets_dir / SIGNING_KEY_FILE

    async def publish_first(self) -> None:
        """A key no event knows yet, published. On a fresh installation on its own subject; on a
        log whose key in use this instance cannot sign with (a folder restored from a backup, or
        auth-signing-key.pem lost) as that key's successor, so the old key verifies the tokens it
        signed until they expire and is then retired, instead of being trusted for ever. A key
        from a rotation was published by it (and may have been adopted during the replay)."""
        assert self._issuer is not None
        issuer = self._issuer
        if issuer.key_id in self._keys:
            return
        previous = key_in_use(self._keys)
        published = SigningKeyPublished(
            key_id=issuer.key_id, algorithm=ALGORITHM, public_key=issuer.public_key, replaces_key_id=previous or ""
        )
        subject_key = previous or issuer.key_id
        state = self._keys.get(subject_key)
        event = NewEvent(
            aggregate_type="signing_key", aggregate_id=subject_key, payload=published, actor=Actor.service("auth")
        )
        detail = f"{previous} -> {issuer.key_id}: the key in use is not in this data folder's secrets"
        at = Position(state.version, state.last_seq) if state else NEW  # as read now
        recorded: contextlib.AbstractAsyncContextManager[object] = contextlib.nullcontext()
        if previous:
            recorded = self.audit.recorded("signing_key_replaced", actor=Actor.service("auth"), detail=detail)
        async with recorded:
            with contextlib.suppress(ChangedMeanwhile):  # another instance sharing the key published it
                await self.events.append(signing_key_subject(subject_key), [event], at)
        await self.events.settle()  # known to this instance's projection before it signs

    def _successor_path(self, key_id: str) -> Path:
        return self._secrets_dir / successor_key_file(key_id)

    async def rotate(self, actor: Actor) -> TokenIssuer:
        """A successor for the key in use, published on that key's subject at its last sequence:
        of auth instances rotating at the same moment (their schedule is the same) exactly one
        succeeds; the others adopt its key from the shared secrets folder instead of adding one."""
        assert self._issuer is not None
        previous = self._issuer.key_id
        state = self._keys.get(previous)
        if state is None:
            raise FailedPrecondition("the signing key in use is not published yet; try again")
        issuer = TokenIssuer.generate(lifetime_s=self._token_lifetime_s)
        # Saved before the claim, so an instance that sees the publication can read the key.
        staged = self._successor_path(issuer.key_id)
        issuer.save(staged)
        assert self._sealer is not None
        published = SigningKeyPublished(
            key_id=issuer.key_id,
            algorithm=ALGORITHM,
            public_key=issuer.public_key,
            replaces_key_id=previous,
            # For the auth instances on other hosts, which do not share this secrets folder.
            sealed_private_key=self._sealer.seal_field(
                issuer.private_der(), field=SEALED_SIGNING_KEY_FIELD, owner=issuer.key_id
            ),
        )
        event = NewEvent(
            aggregate_type="signing_key", aggregate_id=previous, payload=published, actor=Actor.service("auth")
        )
        at = Position(state.version, state.last_seq)  # as read now: of racing rotations, one lands
        try:
            async with self.audit.recorded("signing_key_rotated", actor=actor, detail=f"{previous} -> {issuer.key_id}"):
                await self.events.append(signing_key_subject(previous), [event], at)
        except (ChangedMeanwhile, Unavailable) as exc:
            staged.unlink(missing_ok=True)
            if isinstance(exc, Unavailable):
                raise
            await self.events.settle()  # the winner's successor, adopted as it is applied
            return self._issuer
        # This instance's verifier must know the key before a token signed with it is handed out:
        # the replay applying the publication switches to it (saw), from the staged file.
        await self.events.settle()
        if self._issuer.key_id != issuer.key_id:
            staged.replace(self._signing_key_path)
            self._issuer = issuer
        return self._issuer

    def _adopt_successor(self, published: SigningKeyPublished) -> None:
        """The key we sign with was replaced (by this instance, another one sharing the secrets
        folder, or one on another host): sign with the successor, so the replaced key can be
        retired on time."""
        if self._issuer is None or published.replaces_key_id != self._issuer.key_id:
            return
        staged = self._successor_path(published.key_id)
        for path in (staged, self._signing_key_path):
            with contextlib.suppress(OSError, ValueError):
                issuer = TokenIssuer.load(path, lifetime_s=self._token_lifetime_s)
                if issuer.key_id == published.key_id:
                    # The folder's key and the one signed with change in one step: the folder never
                    # holds a key this instance does not sign with yet (a restart or a copy of it
                    # signs with what this instance signs with).
                    if path == staged:
                        staged.replace(self._signing_key_path)
                    self._issuer = issuer
                    return
        if published.sealed_private_key and self._sealer is not None:
            try:
                der = self._sealer.open_field(
                    published.sealed_private_key, field=SEALED_SIGNING_KEY_FIELD, owner=published.key_id
                )
                issuer = TokenIssuer.from_der(der, lifetime_s=self._token_lifetime_s)
            except (SealedFieldUnreadable, ValueError):
                log.error("signing key %s is sealed under another sealing key; not adopted", published.key_id)
                return
            if issuer.key_id != published.key_id:
                log.error("signing key %s's sealed private key is another key's; not adopted", published.key_id)
                return
            issuer.save(self._signing_key_path)  # a restart signs with it too
            self._issuer = issuer

    async def retire(self, key_id: str, actor: Actor) -> None:
        state = self._keys[key_id]
        if state.retired:
            return
        event = NewEvent(
            aggregate_type="signing_key", aggregate_id=key_id, payload=SigningKeyRetired(key_id=key_id), actor=actor
        )
        async with self.audit.recorded("signing_key_retired", actor=actor, detail=key_id):
            await self.events.append(signing_key_subject(key_id), [event], Position(1, None))

    def _next_due_s(self) -> float:
        assert self._issuer is not None
        due = self.schedule.next_due(self._keys, current_key_id=self._issuer.key_id)
        if due is None:
            return KEY_MAINTENANCE_MAX_WAIT_S
        return min(max(due - time.time(), 0.0), KEY_MAINTENANCE_MAX_WAIT_S)

    async def _chores(self) -> None:
        assert self._issuer is not None
        now = time.time()
        for key_id in self.schedule.retirable(self._keys, current_key_id=self._issuer.key_id, now=now):
            await self.retire(key_id, Actor.service("auth"))
        current = self._keys.get(self._issuer.key_id)
        if current is None:
            return
        due = (at := self.schedule.rotate_at(current)) is not None and at <= now
        # Replaced, yet still ours: the successor's private key was lost (a crash mid-rotation).
        orphaned = replaced_at(self._keys, self._issuer.key_id) is not None
        if due or orphaned:
            await self.rotate(Actor.service("auth"))

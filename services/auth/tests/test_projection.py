"""The projection applies recorded event sequences without a server: state is checked directly."""

from __future__ import annotations

import itertools

from google.protobuf.message import Message
from parley.auth.v1 import events_pb2
from parley.auth.v1.events_pb2 import (
    AccountDisabled,
    AccountEnabled,
    AccountErased,
    AccountErasureRequested,
    DeviceKeysPublished,
    DeviceRemoved,
    InviteCreated,
    InviteRedeemed,
    LoginFailureCounted,
    LoginFailuresCleared,
    MfaRequirementSet,
    OneTimeKeyClaimed,
    OneTimeKeysUploaded,
    PasswordChanged,
    RecoveryCodeUsed,
    RefreshTokenRotated,
    RoleAssigned,
    SessionRevoked,
    SessionStarted,
    SessionStepUpRequired,
    SigningKeyPublished,
    SigningKeyRetired,
    SourceSlowdownLifted,
    SourceSlowed,
    TotpCodeAccepted,
    TotpEnrolled,
    TotpEnrolmentStarted,
    TotpReset,
    UploadedOneTimeKey,
    UserRegistered,
)

from parley_auth import mfa
from parley_auth.lockout import LockoutBook, LockoutPolicy
from parley_auth.projection import APPLIERS, AuthProjection, Recorded
from parley_auth.sealing import PASSWORD_HASH, RECOVERY_CODES, REFRESH_TOKEN, SecretSealer
from parley_auth.sessions import digest
from parley_core.bus import ReceivedEvent
from parley_core.envelope import NewEvent, seal
from parley_core.sources import budget_key

POLICY = LockoutPolicy(threshold=3, base_s=60, max_s=600)
T0 = 1_700_000_000.0


class Log:
    """A recorded AUTH stream: each event at the next sequence, its subject's next version."""

    def __init__(self, projection: AuthProjection) -> None:
        self.projection = projection
        self.seq = itertools.count(1)
        self.versions: dict[str, int] = {}

    def __call__(self, payload: Message, *, subject: str = "", aggregate_id: str = "", at: float = T0) -> Recorded:
        subject = subject or f"parley.auth.user.{getattr(payload, 'user_id', 'x')}"
        self.versions[subject] = self.versions.get(subject, 0) + 1
        recorded = Recorded(
            subject=subject,
            stream_seq=next(self.seq),
            aggregate_id=aggregate_id,
            aggregate_version=self.versions[subject],
            event_id=f"e{len(self.versions)}-{self.versions[subject]}",
            at=at,
        )
        self.projection.apply(payload, recorded)
        return recorded


def fresh(sealer: SecretSealer | None = None) -> tuple[AuthProjection, Log]:
    projection = AuthProjection(lockouts=LockoutBook(pair_policy=POLICY, source_policy=POLICY), sealer=sealer)
    return projection, Log(projection)


def test_every_auth_event_type_has_an_applier_in_the_one_table() -> None:
    # SecurityEventRecorded goes to SEC, not AUTH; UploadedOneTimeKey is a part of an event.
    not_on_auth = {"SecurityEventRecorded", "UploadedOneTimeKey"}
    applied = {t.__name__ for t in APPLIERS}
    assert set(events_pb2.DESCRIPTOR.message_types_by_name) - not_on_auth == applied


def test_registration_role_disable_and_version_tracking() -> None:
    p, log = fresh()
    log(UserRegistered(user_id="u1", username="alice", password_hash="$argon2id$h1", role="member"))
    log(RoleAssigned(user_id="u1", role="admin", previous_role="member"))
    last = log(AccountDisabled(user_id="u1", reason="left"))
    account = p.accounts.find("alice")
    assert account is not None
    assert account.role == "admin"
    assert account.disabled
    assert (account.user_seq, account.user_version) == (last.stream_seq, 3)
    log(AccountEnabled(user_id="u1"))
    assert not account.disabled
    assert p.accounts.by_id("u1") is account


def test_user_event_for_an_unknown_account_changes_nothing() -> None:
    p, log = fresh()
    log(RoleAssigned(user_id="ghost", role="admin"))
    assert p.accounts.by_id("ghost") is None
    assert "ghost" not in p.mfa


def test_sealed_password_hash_opens_with_the_key_and_is_empty_under_another() -> None:
    sealer = SecretSealer(b"k" * 32)
    sealed = sealer.seal_field(b"$argon2id$h2", field=PASSWORD_HASH, owner="u1")
    p, log = fresh(sealer)
    log(UserRegistered(user_id="u1", username="alice", sealed_password_hash=sealed, role="member"))
    assert p.accounts.find("alice").password_hash == "$argon2id$h2"  # type: ignore[union-attr]
    other, other_log = fresh(SecretSealer(b"o" * 32))
    other_log(UserRegistered(user_id="u1", username="alice", sealed_password_hash=sealed, role="member"))
    assert other.accounts.find("alice").password_hash == ""  # type: ignore[union-attr]
    changed = sealer.seal_field(b"$argon2id$h3", field=PASSWORD_HASH, owner="u1")
    log(PasswordChanged(user_id="u1", sealed_password_hash=changed))
    assert p.accounts.find("alice").password_hash == "$argon2id$h3"  # type: ignore[union-attr]


def test_erasure_forgets_the_account_keeps_the_name_held_and_counts_the_marker() -> None:
    p, log = fresh()
    log(UserRegistered(user_id="u1", username="alice", password_hash="h", role="member"))
    log(AccountErasureRequested(user_id="u1", requested_by="user:u1"), subject="parley.auth.erasure.u1")
    erased = log(AccountErased(user_id="u1"), subject="parley.auth.username.x")
    assert p.accounts.find("alice") is None
    assert p.accounts.by_id("u1") is None
    assert p.erasure_requests == {"u1"}
    assert p.erased_users == {"u1"}
    assert erased.event_id in p.erasure_markers
    assert "u1" in p.username_holders.values()


def test_mfa_enrolment_code_use_recovery_and_reset() -> None:
    sealer = SecretSealer(b"k" * 32)
    codes = [mfa.recovery_digest(c) for c in ("aaaa-bbbb", "cccc-dddd")]
    p, log = fresh(sealer)
    log(UserRegistered(user_id="u1", username="alice", password_hash="h", role="member"))
    log(TotpEnrolmentStarted(user_id="u1", sealed_secret=b"sealed-secret"))
    assert p.mfa["u1"].pending_secret == b"sealed-secret"
    assert not p.mfa["u1"].enrolled
    sealed_codes = sealer.seal_field(b"".join(codes), field=RECOVERY_CODES, owner="u1")
    log(TotpEnrolled(user_id="u1", sealed_recovery_codes=sealed_codes))
    state = p.mfa["u1"]
    assert state.enrolled
    assert state.secret == b"sealed-secret"
    assert state.pending_secret == b""
    assert state.recovery == set(codes)
    log(TotpCodeAccepted(user_id="u1", time_step=100))
    log(TotpCodeAccepted(user_id="u1", time_step=90))  # an older step never lowers the mark
    assert state.last_step == 100
    log(RecoveryCodeUsed(user_id="u1", recovery_code_sha256=codes[0]))
    assert state.recovery == {codes[1]}
    log(TotpReset(user_id="u1", reason="lost phone"))
    assert not p.mfa["u1"].enrolled
    assert p.mfa["u1"].last_step == 0


def test_mfa_policy_per_role() -> None:
    p, log = fresh()
    log(MfaRequirementSet(role="admin", required=True), subject="parley.auth.policy.mfa")
    log(MfaRequirementSet(role="owner", required=True), subject="parley.auth.policy.mfa")
    log(MfaRequirementSet(role="admin", required=False), subject="parley.auth.policy.mfa")
    assert p.mfa_required_roles == {"owner"}


def test_session_start_rotation_reuse_source_switch_step_up_and_revocation() -> None:
    p, log = fresh()
    first, second = digest("s1.a"), digest("s1.b")
    subject = "parley.auth.session.s1"
    log(SessionStarted(session_id="s0", user_id="u1", refresh_token_sha256=b"x", source="ipv4:10.0.0.1"),
        subject="parley.auth.session.s0")  # fmt: skip
    log(SessionStarted(session_id="s1", user_id="u1", refresh_token_sha256=first, source="ipv4:10.0.0.2"),
        subject=subject, at=T0)  # fmt: skip
    session = p.sessions.get("s1")
    assert session is not None
    assert session.first_from_source
    assert session.version == 1
    rotated = RefreshTokenRotated(
        session_id="s1", user_id="u1", previous_sha256=first, refresh_token_sha256=second, source="ipv4:10.0.0.3"
    )
    log(rotated, subject=subject, at=T0 + 5)
    assert session.current == second
    assert first in session.spent
    assert session.version == 2
    assert session.switched_source_at == T0 + 5
    assert session.last_source == "ipv4:10.0.0.3"
    log(SessionStepUpRequired(session_id="s1", user_id="u1", reason="odd"), subject=subject)
    assert session.step_up_required
    last = log(SessionRevoked(session_id="s1", user_id="u1", reason=""), subject=subject)
    assert session.revoked
    assert session.revoked_reason == "revoked"
    assert session.last_seq == last.stream_seq


def test_sealed_refresh_token_digest_is_bound_to_its_session() -> None:
    sealer = SecretSealer(b"k" * 32)
    sealed = sealer.seal_field(digest("s1.a"), field=REFRESH_TOKEN, owner="s1")
    p, log = fresh(sealer)
    log(SessionStarted(session_id="s1", user_id="u1", sealed_refresh_token_sha256=sealed), subject="s.s1")
    log(SessionStarted(session_id="s2", user_id="u1", sealed_refresh_token_sha256=sealed), subject="s.s2")
    assert p.sessions.get("s1").current == digest("s1.a")  # type: ignore[union-attr]
    assert p.sessions.get("s2").current == b""  # type: ignore[union-attr]  # a copied digest opens nowhere else


def test_failed_logins_lock_the_pair_and_a_success_clears_it() -> None:
    p, log = fresh()
    now = p.lockouts.clock()
    for _ in range(POLICY.threshold):
        log(LoginFailureCounted(account_key="alice", source="ipv4:10.0.0.1"), subject="l", at=now)
    assert p.lockouts.check("alice", budget_key("ipv4:10.0.0.1")) is not None
    assert p.lockouts.check("alice", budget_key("ipv4:10.0.0.2")) is None
    log(LoginFailuresCleared(account_key="alice", source="ipv4:10.0.0.1"), subject="l")
    assert not p.lockouts.has_failures("alice", budget_key("ipv4:10.0.0.1"))


def test_slowed_source_and_its_lifting() -> None:
    p, log = fresh()
    until = p.lockouts.clock() + 600
    log(SourceSlowed(source="ipv4:10.0.0.9", until_unix=until, reason="spraying"), subject="s")
    assert budget_key("ipv4:10.0.0.9") in p.lockouts.slowed_now()
    log(SourceSlowdownLifted(source=budget_key("ipv4:10.0.0.9"), lifted_until=until), subject="s")
    assert budget_key("ipv4:10.0.0.9") not in p.lockouts.slowed_now()


def test_invites_are_created_then_redeemed_once() -> None:
    p, log = fresh()
    created = log(InviteCreated(invite_sha256=b"h" * 32, role="member", expires_at_unix=2), subject="i")
    assert p.invites[b"h" * 32].last_seq == created.stream_seq
    assert not p.invites[b"h" * 32].redeemed
    redeemed = log(InviteRedeemed(invite_sha256=b"h" * 32, user_id="u1"), subject="i")
    assert p.invites[b"h" * 32].redeemed
    assert p.invites[b"h" * 32].last_seq == redeemed.stream_seq
    log(InviteRedeemed(invite_sha256=b"z" * 32, user_id="u1"), subject="j")  # unknown: ignored
    assert b"z" * 32 not in p.invites


def test_signing_key_successor_counts_on_the_replaced_keys_subject_and_retires() -> None:
    p, log = fresh()
    log(SigningKeyPublished(key_id="k1"), subject="parley.auth.key.k1", aggregate_id="k1", at=T0)
    last = log(SigningKeyPublished(key_id="k2", replaces_key_id="k1"), subject="parley.auth.key.k1",
               aggregate_id="k1", at=T0 + 10)  # fmt: skip
    assert p.signing_keys["k1"].version == 2
    assert p.signing_keys["k1"].last_seq == last.stream_seq
    assert p.signing_keys["k2"].replaces == "k1"
    assert p.signing_keys["k2"].published_at == T0 + 10
    log(SigningKeyRetired(key_id="k1"), subject="parley.auth.key.k1", aggregate_id="k1")
    assert p.signing_keys["k1"].retired
    assert [k.key_id for k in p.published_keys] == ["k1", "k2"]


def test_device_keys_upload_claim_and_removal() -> None:
    p, log = fresh()
    subject = "parley.auth.device.u1.d1"
    log(DeviceKeysPublished(user_id="u1", device_id="d1", curve25519=b"c", ed25519=b"e"), subject=subject)
    uploaded = OneTimeKeysUploaded(
        user_id="u1", device_id="d1", keys=[UploadedOneTimeKey(key_id="a", key=b"1"), UploadedOneTimeKey(key_id="b")]
    )
    uploaded.fallback_key.CopyFrom(UploadedOneTimeKey(key_id="f", key=b"9"))
    log(uploaded, subject=subject)
    device = p.keys.get("u1", "d1")
    assert device is not None
    assert set(device.unclaimed) == {"a", "b"}
    assert device.fallback is not None
    last = log(OneTimeKeyClaimed(user_id="u1", device_id="d1", key_id="a", claimed_by="u2"), subject=subject)
    assert set(device.unclaimed) == {"b"}
    assert (device.version, device.last_seq) == (3, last.stream_seq)
    log(DeviceRemoved(user_id="u1", device_id="d1"), subject=subject)
    assert p.keys.get("u1", "d1") is None
    assert ("u1", "d1") in p.keys.removed


def test_every_event_marks_its_subjects_version_for_the_gap_check() -> None:
    p, log = fresh()
    log(UserRegistered(user_id="u1", username="alice", password_hash="h", role="member"), subject="parley.auth.x")
    log(RoleAssigned(user_id="u1", role="admin"), subject="parley.auth.user.u1")
    p.apply(RoleAssigned(user_id="u1", role="owner"), Recorded("parley.auth.user.u1", 9, "u1", 3, "e", T0))
    assert [str(gap) for gap in p.subject_versions.unexplained()]  # version 2 of the user subject is missing


def test_apply_received_opens_the_envelope_and_takes_its_place_in_the_log() -> None:
    p, _ = fresh()
    new = NewEvent(aggregate_type="user", aggregate_id="u1", payload=MfaRequirementSet(role="admin", required=True),
                   actor="x")  # fmt: skip
    envelope = seal(new, aggregate_version=4, producer="test", trace_context={})
    received = ReceivedEvent(envelope, "parley.auth.policy.mfa", "AUTH", stream_seq=7, num_delivered=1, headers={})
    payload = p.apply_received(received)
    assert isinstance(payload, MfaRequirementSet)
    assert p.mfa_required_roles == {"admin"}
    assert Recorded.of(received).aggregate_version == 4
    assert Recorded.of(received).stream_seq == 7

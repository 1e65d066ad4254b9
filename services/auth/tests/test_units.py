"""Unit tests of the auth domain: no I/O, no servers."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.exceptions import InvalidTag

from parley_auth import mfa
from parley_auth.key_rotation import RETIRE_MARGIN_S, KeySchedule, SigningKeyState
from parley_auth.lockout import ACCOUNT_BACKSTOP, SWEEP_EVERY, LockoutBook, LockoutPolicy, Scope
from parley_auth.passwords import verify_password
from parley_auth.sealing import PASSWORD_HASH, REFRESH_TOKEN, SealedFieldUnreadable, SecretSealer
from parley_auth.sessions import RefreshVerdict, Session, digest, new_refresh_token
from parley_core.rbac import may_assign


def test_lockout_doubles_and_releases() -> None:
    now = [0.0]
    book = LockoutBook(
        pair_policy=LockoutPolicy(threshold=3, base_s=2.0, max_s=60.0),
        source_policy=LockoutPolicy(threshold=100, base_s=2.0, max_s=60.0),
        clock=lambda: now[0],
    )
    assert book.record_failure("eve", "ip") is None
    assert book.record_failure("eve", "ip") is None
    first = book.record_failure("eve", "ip")
    assert first is not None
    assert first.retry_after_s == 2.0
    assert book.check("eve", "ip") is not None
    now[0] += 2.1
    assert book.check("eve", "ip") is None
    second = book.record_failure("eve", "ip")
    assert second is not None
    assert second.retry_after_s == 4.0  # exponential
    for _ in range(10):
        book.record_failure("eve", "ip")
    assert book.check("eve", "ip") is not None
    assert book.check("eve", "ip").retry_after_s <= 60.0  # type: ignore[union-attr]
    now[0] += 61
    book.record_success("eve", "ip")
    assert book.check("eve", "ip") is None


def test_a_count_without_failures_for_a_day_starts_again() -> None:
    policy = LockoutPolicy(threshold=3, base_s=2.0, max_s=60.0, forget_after_s=86400.0)
    book = LockoutBook(pair_policy=policy, source_policy=policy, clock=lambda: 0.0)
    book.record_failure("ann", "ip", at=0.0)
    book.record_failure("ann", "ip", at=10.0)
    # A day and more later: the two old failures no longer count towards the threshold.
    assert book.record_failure("ann", "ip", at=10.0 + 86400.0 + 1) is None
    assert book.record_failure("ann", "ip", at=10.0 + 86400.0 + 2) is None
    assert book.record_failure("ann", "ip", at=10.0 + 86400.0 + 3) is not None


def test_source_lockout_spans_accounts() -> None:
    book = LockoutBook(
        pair_policy=LockoutPolicy(threshold=100, base_s=1.0, max_s=60.0),
        source_policy=LockoutPolicy(threshold=3, base_s=5.0, max_s=60.0),
        clock=lambda: 0.0,
    )
    for name in ("a", "b", "c"):
        book.record_failure(name, "10.0.0.9")
    locked = book.check("someone-else", "10.0.0.9")
    assert locked is not None
    assert locked.scope is Scope.SOURCE
    assert "from your address" in locked.message
    assert book.check("someone-else", "10.0.0.10") is None


def test_a_stranger_locks_only_his_own_tries_at_an_account() -> None:
    book = LockoutBook(
        pair_policy=LockoutPolicy(threshold=3, base_s=60.0, max_s=600.0),
        source_policy=LockoutPolicy(threshold=50, base_s=60.0, max_s=600.0),
        clock=lambda: 0.0,
    )
    for _ in range(5):
        book.record_failure("victim", "stranger")
    locked = book.check("victim", "stranger")
    assert locked is not None
    assert locked.scope is Scope.PAIR
    assert book.check("victim", "home") is None  # the victim, from her own address
    # Her success at home clears her own pair only: the stranger stays locked.
    book.record_failure("victim", "home")
    book.record_success("victim", "home")
    assert not book.has_failures("victim", "home")
    assert book.check("victim", "stranger") is not None
    # A clearing record from before per-pair counts (no source) clears every pair, as it did.
    book.record_success("victim")
    assert book.check("victim", "stranger") is None


def test_the_account_backstop_bounds_guesses_from_ever_new_addresses() -> None:
    """A guesser naming a new address per try (as the gateway's certificate may) gets the
    backstop's threshold, then one try per cool-down; the owner's success does not reset it,
    an administrator's unlock does."""
    now = [0.0]
    book = LockoutBook(
        pair_policy=LockoutPolicy(threshold=5, base_s=2.0, max_s=900.0),
        source_policy=LockoutPolicy(threshold=50, base_s=2.0, max_s=900.0),
        account_policy=ACCOUNT_BACKSTOP,
        clock=lambda: now[0],
    )
    guesses, address = 0, 0
    while now[0] < 3600.0:  # an hour of guessing as fast as auth lets him
        address += 1
        if (locked := book.check("victim", f"ipv4:10.1.{address // 250}.{address % 250}")) is None:
            book.record_failure("victim", f"ipv4:10.1.{address // 250}.{address % 250}", at=now[0])
            guesses += 1
            now[0] += 1.0
        else:
            assert locked.scope is Scope.ACCOUNT
            assert "from many addresses; try again in 5 minutes" in locked.message
            now[0] += locked.retry_after_s
    assert guesses <= ACCOUNT_BACKSTOP.threshold + 3600.0 / ACCOUNT_BACKSTOP.base_s
    book.record_failure("victim", "ipv4:10.2.0.1", at=now[0])  # one more: a cool-down runs now
    book.record_success("victim", "ipv4:10.1.0.1")  # the owner's (or a lucky) success at one address
    assert book.check("victim", "home") is not None
    assert book.check("someone-else", "home") is None
    book.record_success("victim")  # an administrator's unlock
    assert book.check("victim", "home") is None


def test_counts_older_than_a_day_are_swept_and_recent_ones_kept() -> None:
    policy = LockoutPolicy(threshold=3, base_s=60.0, max_s=600.0, forget_after_s=86400.0)
    book = LockoutBook(pair_policy=policy, source_policy=policy, clock=lambda: 0.0)
    for n in range(SWEEP_EVERY - 1):
        book.record_failure(f"sprayed{n}", f"ipv4:10.0.{n // 250}.{n % 250}", at=0.0)
    book.record_failure("victim", "stranger", at=86400.0 + 1)  # the sweep runs with this one
    assert not book.has_failures("sprayed0", "ipv4:10.0.0.0")
    assert book.has_failures("victim", "stranger")
    assert book.check("sprayed0", "ipv4:10.0.0.0") is None


def test_refresh_token_verdicts() -> None:
    first = new_refresh_token("s1")
    second = new_refresh_token("s1")
    session = Session(session_id="s1", user_id="u", started_at=0.0, current=digest(first))
    assert session.judge(digest(first)) is RefreshVerdict.CURRENT
    session.rotate(digest(first), digest(second), 1.0)
    assert session.judge(digest(second)) is RefreshVerdict.CURRENT
    assert session.judge(digest(first)) is RefreshVerdict.REUSED
    assert session.judge(digest(new_refresh_token("s1"))) is RefreshVerdict.UNKNOWN


def test_totp_step_matching_refuses_old_and_replayed_steps() -> None:
    secret = mfa.new_secret()
    now = 1_700_000_000.0
    current = mfa.code_at(secret, now)
    step = mfa.matching_step(secret, current, now, after_step=0)
    assert step == int(now) // mfa.STEP_S
    assert mfa.matching_step(secret, current, now, after_step=step) is None  # replay
    assert mfa.matching_step(secret, mfa.code_at(secret, now - 90), now, after_step=0) is None  # too old
    assert mfa.matching_step(secret, mfa.code_at(secret, now - 30), now, after_step=0) is not None  # drift
    assert mfa.matching_step(secret, "12345", now, after_step=0) is None
    assert mfa.matching_step(secret, "abcdef", now, after_step=0) is None


def test_sealed_totp_secret_is_bound_to_its_user(tmp_path: Path) -> None:
    sealer = SecretSealer.load_or_create(tmp_path / "mfa.key")
    assert (tmp_path / "mfa.key").stat().st_mode & 0o077 == 0
    secret = mfa.new_secret()
    sealed = sealer.seal(secret, "u1")
    assert secret not in sealed
    assert SecretSealer.load_or_create(tmp_path / "mfa.key").open(sealed, "u1") == secret
    with pytest.raises(InvalidTag):
        sealer.open(sealed, "u2")


def test_a_sealed_field_opens_only_as_what_it_was_sealed_as(tmp_path: Path) -> None:
    sealer = SecretSealer.load_or_create(tmp_path / "secrets" / "mfa.key")
    assert (tmp_path / "secrets").stat().st_mode & 0o777 == 0o700
    value = b"$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA"
    sealed = sealer.seal_field(value, field=PASSWORD_HASH, owner="u1")
    assert value not in sealed
    assert sealer.open_field(sealed, field=PASSWORD_HASH, owner="u1") == value
    for field, owner in ((PASSWORD_HASH, "u2"), (REFRESH_TOKEN, "u1")):  # another account, another field
        with pytest.raises(SealedFieldUnreadable):
            sealer.open_field(sealed, field=field, owner=owner)
    with pytest.raises(SealedFieldUnreadable):  # another key: another installation's, or a lost one's
        SecretSealer.load_or_create(tmp_path / "other.key").open_field(sealed, field=PASSWORD_HASH, owner="u1")
    with pytest.raises(InvalidTag):  # a TOTP secret's associated data never matches a field's
        sealer.open(sealed, "u1")


def test_recovery_codes_are_random_and_normalised() -> None:
    codes = mfa.new_recovery_codes()
    assert len(set(codes)) == mfa.RECOVERY_CODES
    assert mfa.recovery_digest(codes[0].upper() + " ") == mfa.recovery_digest(codes[0])


def test_only_owners_hand_out_owner_and_admin() -> None:
    assert may_assign("owner", target_current_role="member", new_role="admin")
    assert may_assign("admin", target_current_role="member", new_role="operator")
    assert not may_assign("admin", target_current_role="member", new_role="owner")
    assert not may_assign("admin", target_current_role="admin", new_role="member")
    assert not may_assign("member", target_current_role="guest", new_role="member")
    assert not may_assign("security-auditor", target_current_role="guest", new_role="member")


def test_schedule_rotates_after_the_interval_and_retires_after_the_token_lifetime() -> None:
    schedule = KeySchedule(rotation_s=100.0, token_lifetime_s=10.0)
    keys = {"a": SigningKeyState(published_at=0.0)}
    assert schedule.next_due(keys, current_key_id="a") == 100.0
    keys["b"] = SigningKeyState(published_at=100.0, replaces="a")
    assert schedule.retirable(keys, current_key_id="b", now=100.0 + 10.0) == []
    assert schedule.retirable(keys, current_key_id="b", now=110.0 + RETIRE_MARGIN_S) == ["a"]
    assert schedule.next_due(keys, current_key_id="b") == 110.0 + RETIRE_MARGIN_S
    keys["a"].retired = True
    assert schedule.next_due(keys, current_key_id="b") == 200.0
    assert KeySchedule(rotation_s=0, token_lifetime_s=10.0).next_due({"b": keys["b"]}, current_key_id="b") is None


async def test_an_account_whose_hash_is_missing_or_unopenable_never_logs_in() -> None:
    """A sealed hash that does not open is applied as empty: no password matches it, not even the
    one the timing equaliser's dummy hash was made from."""
    for unusable in ("", None):
        assert not await verify_password(unusable, "parley-timing-equaliser")


def test_the_lockout_a_failure_would_start_is_known_before_it_is_counted() -> None:
    book = LockoutBook(
        pair_policy=LockoutPolicy(threshold=2, base_s=2.0, max_s=60.0),
        source_policy=LockoutPolicy(threshold=100, base_s=2.0, max_s=60.0),
        clock=lambda: 100.0,
    )
    assert book.would_lock("eve", "ip") is None
    book.record_failure("eve", "ip")
    predicted = book.would_lock("eve", "ip")
    assert predicted is not None
    assert predicted.scope is Scope.PAIR
    assert book.would_lock("eve", "ip") == predicted  # asking counts nothing
    assert book.record_failure("eve", "ip") == predicted


def test_a_slowed_address_is_told_its_recorded_name_and_how_an_administrator_lifts_it() -> None:
    policy = LockoutPolicy(threshold=3, base_s=2.0, max_s=60.0)
    book = LockoutBook(pair_policy=policy, source_policy=policy, clock=lambda: 1000.0)
    book.slow("ipv4:203.0.113.9", 1900.0)
    locked = book.check("ann", "ipv4:203.0.113.9")
    assert locked is not None
    assert locked.scope is Scope.SLOWED
    assert "logins from your address (ipv4:203.0.113.9) are held back" in locked.message
    assert "`parley admin lift-slowdown ipv4:203.0.113.9`" in locked.message


def test_a_lifted_slow_down_is_not_put_back_by_the_same_fact_and_a_new_one_slows_again() -> None:
    policy = LockoutPolicy(threshold=100, base_s=1.0, max_s=60.0)
    book = LockoutBook(pair_policy=policy, source_policy=policy, clock=lambda: 1000.0)
    book.slow("ipv4:203.0.113.9", 1900.0)
    assert book.check("anyone", "ipv4:203.0.113.9") is not None
    assert book.slowed_now() == {"ipv4:203.0.113.9": 1900.0}
    book.lift("ipv4:203.0.113.9", 1900.0)
    assert book.check("anyone", "ipv4:203.0.113.9") is None
    assert book.slowed_now() == {}
    # The detector's fact read again (a redelivery, a replay): answered, and changes nothing.
    assert book.slow_down_answered("ipv4:203.0.113.9", 1900.0)
    book.slow("ipv4:203.0.113.9", 1900.0)
    assert book.check("anyone", "ipv4:203.0.113.9") is None
    # A later finding slows the address again.
    assert not book.slow_down_answered("ipv4:203.0.113.9", 2500.0)
    book.slow("ipv4:203.0.113.9", 2500.0)
    assert book.check("anyone", "ipv4:203.0.113.9") is not None

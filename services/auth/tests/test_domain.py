import pytest

from parley_auth.accounts import Account, AccountDirectory
from parley_auth.password_policy import check_password_policy
from parley_auth.passwords import HASHER, hash_password, verify_password
from parley_auth.usernames import normalize_username, username_key
from parley_core.errors import InvalidArgument


def test_look_alike_usernames_normalize_to_one_name() -> None:
    # Fullwidth letters (U+FF21...) and case differences are the same account.
    assert normalize_username("\uff21\uff2c\uff29\uff23\uff25") == normalize_username("Alice") == "alice"
    assert username_key("alice") == username_key(normalize_username("ALICE"))


@pytest.mark.parametrize("bad", ["", "ab", "a" * 33, "alice smith", "-alice", "al/ice", "ali\u200bce"])
def test_invalid_usernames_are_refused(bad: str) -> None:
    with pytest.raises(InvalidArgument):
        normalize_username(bad)


def test_password_policy() -> None:
    check_password_policy("a-long-passphrase", "bob")
    with pytest.raises(InvalidArgument, match="at least"):
        check_password_policy("short", "bob")
    with pytest.raises(InvalidArgument, match="username"):
        check_password_policy("my-name-is-Alice-ok", "alice")


def test_a_long_password_is_scored_by_its_first_characters_not_refused_with_an_error() -> None:
    """zxcvbn raises ValueError past 72 characters: a long password was an INTERNAL error."""
    check_password_policy("correct-horse-battery-staple-" * 30, "bob")  # 870 characters
    with pytest.raises(InvalidArgument, match="too weak"):
        check_password_policy("a" * 300, "bob")


async def test_argon2id_with_owasp_parameters() -> None:
    assert HASHER.memory_cost >= 19 * 1024
    assert HASHER.time_cost >= 2
    stored = await hash_password("a-long-passphrase")
    assert stored.startswith("$argon2id$")
    assert await verify_password(stored, "a-long-passphrase")
    assert not await verify_password(stored, "another-passphrase")
    # An unknown account still costs a verification and never succeeds.
    assert not await verify_password(None, "a-long-passphrase")


def test_an_erased_account_is_forgotten_by_name_and_by_id() -> None:
    accounts = AccountDirectory()
    accounts.add(Account("u1", "alice", "$argon2id$…", "member"))
    accounts.add(Account("u2", "bob", "$argon2id$…", "member"))
    accounts.forget("u1")
    accounts.forget("u1")  # a repeated tombstone changes nothing
    assert accounts.find("alice") is None
    assert accounts.by_id("u1") is None
    assert accounts.by_id("u2") == accounts.find("bob")

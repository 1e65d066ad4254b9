"""`parley login --totp CODE` takes either second factor: the app's digits or a recovery code."""

from __future__ import annotations

from parley_cli.signin import totp_or_recovery as _totp_or_recovery


def test_digits_go_as_the_apps_code_and_anything_else_as_a_recovery_code() -> None:
    assert _totp_or_recovery("123456") == ("123456", "")
    assert _totp_or_recovery("123 456") == ("123456", "")  # as some apps show it
    assert _totp_or_recovery("abcd-ef23-4567-wxyz") == ("", "abcd-ef23-4567-wxyz")
    assert _totp_or_recovery("2345-6723-4567-2345") == ("", "2345-6723-4567-2345")  # base32 digits only
    assert _totp_or_recovery("2345672345672345") == ("", "2345672345672345")  # typed without dashes
    assert _totp_or_recovery("") == ("", "")

"""What a password must be before it is hashed (passwords.py hashes and verifies it). Free of
protobuf, gRPC, NATS and I/O."""

from __future__ import annotations

from zxcvbn import zxcvbn

from parley_core.errors import InvalidArgument

MIN_PASSWORD_LENGTH = 10
MAX_PASSWORD_LENGTH = 1024
# zxcvbn scores 0..4; 3 is "safely unguessable: moderate protection from offline attacks".
MIN_PASSWORD_SCORE = 3
# zxcvbn's cost grows with length: it scores at most its default of 72 characters (and refuses more).
SCORED_PREFIX = 72


def check_password_policy(password: str, username: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidArgument(f"password must be at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise InvalidArgument(f"password must be at most {MAX_PASSWORD_LENGTH} characters")
    if username in password.casefold():
        raise InvalidArgument("password must not contain the username")
    result = zxcvbn(password[:SCORED_PREFIX], user_inputs=[username])
    if int(result["score"]) < MIN_PASSWORD_SCORE:
        hint = str(result.get("feedback", {}).get("warning") or "it is too easy to guess")
        raise InvalidArgument(f"password is too weak ({hint.rstrip('.')}); use a longer passphrase of unrelated words")


def check_current_password_given(current_password: str) -> None:
    if not current_password or len(current_password) > MAX_PASSWORD_LENGTH:
        raise InvalidArgument(f"current_password is required (at most {MAX_PASSWORD_LENGTH} characters)")

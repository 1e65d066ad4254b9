"""The SDK's errors: a refused call, a write of unknown outcome, a login that needs a second factor."""

from __future__ import annotations

import grpc


class ParleyError(Exception):
    """A call the platform refused; `code` is the gRPC status, the message says what to do.

    `retry_after_s` is set when the gateway's rate limit refused the call: wait that long.
    """

    def __init__(self, code: grpc.StatusCode, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.retry_after_s = retry_after_s


class OutcomeUnknown(ParleyError):
    """A write whose outcome the platform could not confirm before the call's deadline.

    It may or may not have been made. Calling again with the same `idempotency_key` (a send,
    a channel creation) or the same request never makes it twice and returns the result if it was.
    """

    def __init__(self, last: ParleyError, idempotency_key: str = "") -> None:
        again = (
            f"call again with idempotency_key={idempotency_key!r}" if idempotency_key else "make the same call again"
        )
        super().__init__(
            last.code,
            f"the platform did not confirm this change before the deadline, so it may or may not have been made; "
            f"{again} to find out (it is never made twice). Last answer: {last.message}",
        )
        self.idempotency_key = idempotency_key
        self.last = last  # the platform's last answer, for a caller that words the outcome itself


# gRPC's words when a call found no connection to make (refused, no route, failed handshake): the
# request never left this process.
NO_CONNECTION = "failed to connect to all addresses"


def never_sent(error: ParleyError) -> bool:
    """True for a call that failed before any connection to the gateway was made: nothing was sent."""
    return error.code == grpc.StatusCode.UNAVAILABLE and NO_CONNECTION in error.message


class MfaRequired(ParleyError):
    """The account uses two-factor authentication: log in again with a TOTP or recovery code."""


# Auth's refusal of a login without the second factor starts with these words (auth.proto).
MFA_MISSING = "this account uses two-factor authentication"


def error_of(exc: grpc.aio.AioRpcError) -> ParleyError:
    """The ParleyError for a failed call, with the rate limit's retry hint when it sent one."""
    retry_after_s = None
    for key, value in exc.trailing_metadata() or ():
        if key == "retry-after-ms":
            retry_after_s = int(value) / 1000
    return ParleyError(exc.code(), exc.details() or exc.code().name, retry_after_s)

"""Domain errors that every service raises.

Command handlers raise these; the server interceptor turns each into one gRPC status with the
error's message (error_status.py: the table lives there, so a domain that raises them imports no
grpc). Anything else becomes INTERNAL with a reference id, never a trace.
"""

from __future__ import annotations


class DomainError(Exception):
    """A refusal a client can act on; the message is shown to the caller as-is."""


class InvalidArgument(DomainError):
    pass


class Unauthenticated(DomainError):
    pass


class PermissionDenied(DomainError):
    pass


class NotFound(DomainError):
    pass


class AlreadyExists(DomainError):
    pass


class FailedPrecondition(DomainError):
    pass


class ResourceExhausted(DomainError):
    pass


class Unavailable(DomainError):
    pass


# Trailing metadata on an UNAVAILABLE answer whose change may or may not have been made; the
# gateway passes it on, and the SDK retries such a call with the same idempotency key.
OUTCOME_METADATA = "parley-outcome"
OUTCOME_UNKNOWN = "unknown"
OUTCOME_UNKNOWN_MESSAGE = (
    "the event log did not confirm this change in time, so it may or may not have been made; "
    "retry it (a send with the same idempotency key), which never makes it twice"
)


class OutcomeUnknown(Unavailable):
    """A write that may or may not have landed (publish timeout, lost connection, deadline).

    Answered UNAVAILABLE with `parley-outcome: unknown`, never INTERNAL: the caller retries
    with the same idempotency key, which finds the first write if it landed.
    """

    def __init__(self, message: str = OUTCOME_UNKNOWN_MESSAGE) -> None:
        super().__init__(message)

"""Domain errors that every service raises, and the one table that maps them to gRPC status.

Command handlers raise these; the server interceptor in runner.py turns them into a status
with the error's message. Anything else becomes INTERNAL with a reference id, never a trace.
"""

from __future__ import annotations

import grpc


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


STATUS_FOR: dict[type[DomainError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    NotFound: grpc.StatusCode.NOT_FOUND,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
}


def status_for(error: DomainError) -> grpc.StatusCode:
    for cls in type(error).__mro__:
        if cls in STATUS_FOR:
            return STATUS_FOR[cls]
    return grpc.StatusCode.INTERNAL

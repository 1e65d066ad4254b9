"""Who may read what from the archive. Pure rules over the calling peer and the user behind it.

The user's role comes from the access token's `role` claim (parley_core.tokens.Caller.role). The
auth service's fuller RBAC is being built in parallel; until it lands, `security-auditor` in that
claim is what grants audit access.
"""

from __future__ import annotations

from dataclasses import dataclass

from parley_core.errors import PermissionDenied
from parley_core.tokens import Caller
from parley_core.topology import PLATFORM_USER, SERVICES, STREAMS

AUDITOR_ROLE = "security-auditor"
GATEWAY = "gateway"


@dataclass(frozen=True)
class Requester:
    peer: str  # common name of the calling process's certificate (mutual TLS)
    caller: Caller | None  # the user whose token came with the call, if any

    @property
    def is_operator(self) -> bool:
        """The operator's own tooling; with a user's token it acts as that user, nothing more."""
        return self.peer == PLATFORM_USER and self.caller is None

    @property
    def is_auditor(self) -> bool:
        return self.caller is not None and self.caller.role == AUDITOR_ROLE

    @property
    def acting_as(self) -> str:
        return self.caller.user_id if self.caller is not None else self.peer


def readable_streams(requester: Requester) -> frozenset[str] | None:
    """Streams the requester may read raw events of; None means all of them.

    A service reads, from the archive, exactly the streams NATS lets it read live: the readers
    declared in topology. The gateway only forwards users, so it gets nothing on its own account.
    """
    if requester.is_operator or requester.is_auditor:
        return None
    if requester.peer in SERVICES and requester.peer != GATEWAY:
        return frozenset(s.name for s in STREAMS if requester.peer in s.readers or s.owner == requester.peer)
    raise PermissionDenied(f"reading archived events needs the {AUDITOR_ROLE!r} role")


def require_auditor(requester: Requester) -> None:
    if not requester.is_auditor:
        raise PermissionDenied(f"audit queries need the {AUDITOR_ROLE!r} role in your access token")


def require_operator_or_auditor(requester: Requester, what: str) -> None:
    """What the archive knows about itself (lag, retention policies): to watch it, not to change it."""
    if not (requester.is_operator or requester.is_auditor):
        raise PermissionDenied(f"{what} is for the operator's platform identity and the {AUDITOR_ROLE!r} role")


def require_self_or_operator(requester: Requester, user_id: str) -> None:
    """Export and erasure are the data subject's rights; the operator may act on their request."""
    if requester.is_operator:
        return
    if requester.caller is None or requester.caller.user_id != user_id:
        raise PermissionDenied("only the user themself, or the operator on their behalf, may do this")


def require_operator(requester: Requester) -> None:
    if not requester.is_operator:
        raise PermissionDenied("only the operator's platform identity may change retention or rotate keys")


def require_platform_peer(requester: Requester) -> None:
    """Archive metadata (no event content): any service, the operator, or an auditor."""
    if not (requester.is_operator or requester.is_auditor or (requester.peer in SERVICES and requester.caller is None)):
        raise PermissionDenied(f"schema versions are for Parley's services, the operator and the {AUDITOR_ROLE!r} role")

"""Who may read what from the archive. Pure rules over the calling peer and the user behind it.

The user's role is the one storage's own access projection holds for them now
(parley_core.tokens.Caller.role); `security-auditor` is what grants audit access.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from parley_core.actor import Actor
from parley_core.errors import PermissionDenied
from parley_core.rbac import Permission
from parley_core.tokens import Caller
from parley_core.topology import PLATFORM_USER, SERVICES, STREAMS, STREAMS_BY_NAME

AUDITOR_ROLE = "security-auditor"
SECURITY_WATCHERS = (AUDITOR_ROLE, "admin", "owner")
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
        """Who, as a payload names people (a user id; a process by its certificate name)."""
        return self.caller.user_id if self.caller is not None else self.peer

    @property
    def actor(self) -> Actor:
        """Who, as an envelope records it."""
        if self.caller is not None or self.peer == PLATFORM_USER:
            return Actor.user(self.acting_as)  # the platform identity's is Actor.PLATFORM
        return Actor.service(self.peer)


class View(Enum):
    """How much of an archived event a reader gets."""

    REFUSED = "refused"
    METADATA = "metadata"  # position, type, aggregate, actor, time; no content (ArchivedEvent.withheld)
    WITHOUT_SECRETS = "without secrets"  # content, with the writer's secret fields withheld
    FULL = "full"


# What people write to each other: an auditor sees that it happened, never what it says.
CONTENT_STREAMS = frozenset({"MSG"})


def stream_view(requester: Requester, stream: str) -> View:
    """What `requester` reads of `stream` through every archive API (ReadArchivedStream,
    GetAggregateEvents, QueryAudit): the matrix in docs/security.md.

    A service reads, from the archive, exactly the streams NATS lets it read live (the readers
    declared in topology); the operator's tooling every stream; an auditor every stream, `MSG`
    as metadata only. Fields marked secret (password hashes, token digests) go to the service
    that wrote them and to no one else. The gateway only forwards users: nothing on its own account.
    """
    spec = STREAMS_BY_NAME[stream]
    if requester.is_auditor and stream in CONTENT_STREAMS:
        return View.METADATA
    service = requester.peer in SERVICES and requester.peer != GATEWAY
    if not (requester.is_auditor or requester.is_operator) and not (
        service and (requester.peer in spec.readers or spec.owner == requester.peer)
    ):
        return View.REFUSED
    writer = service and not requester.is_auditor and spec.owner == requester.peer
    return View.FULL if writer else View.WITHOUT_SECRETS


def readable_streams(requester: Requester) -> frozenset[str]:
    """Streams the requester reads anything of; refused when none."""
    streams = frozenset(s.name for s in STREAMS if stream_view(requester, s.name) is not View.REFUSED)
    if not streams:
        raise PermissionDenied(f"reading archived events needs the {AUDITOR_ROLE!r} role")
    return streams


def require_auditor(requester: Requester) -> None:
    if not requester.is_auditor:
        raise PermissionDenied(f"audit queries need the {AUDITOR_ROLE!r} role in your access token")


def require_security_watcher(requester: Requester) -> None:
    """The live security events: who audits, and who responds to them (admin, owner)."""
    caller = requester.caller
    # The role, and a session that owes no second factor (its permissions hold audit.read).
    if caller is None or caller.role not in SECURITY_WATCHERS or Permission.AUDIT_READ not in caller.permissions:
        raise PermissionDenied(f"the security event stream is for the {', '.join(SECURITY_WATCHERS)} roles")


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

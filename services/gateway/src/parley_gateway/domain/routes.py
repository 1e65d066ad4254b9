"""The gateway's plain calls, in one table: each passes the client's request on to one internal
service's RPC of the same request and answer (parley_gateway.forwarding), after the checks every
call passes (size, token, budget). The table says which service, whether a token is needed,
whether a failed call may be sent again, and the gateway's own permission check; the stubs it
calls are bound to it in parley_gateway.routes.

A Gateway RPC that does more (the send path, history, live streams, erasure, user search, the
audit verdict, the filed reports) is written out in GatewayApp instead; an RPC must be one or the
other (tests/test_forwarding.py fails for one that is neither).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

from parley_core.rbac import Permission


class Upstream(Enum):
    """The internal service (and its gRPC service) a route calls."""

    AUTH = "parley.auth.v1.AuthService"
    MESSAGING = "parley.messaging.v1.MessagingService"
    DEVICES = "parley.messaging.v1.DeviceKeyService"
    ARCHIVE = "parley.storage.v1.StorageArchiveService"
    PATCH = "parley.patch.v1.PatchService"
    FLEET = "parley.fleet.v1.FleetService"


class Again(Enum):
    """Whether a call messaging's primary failed to answer is sent again on its stable door
    (GatewayApp._again): only calls safe to repeat."""

    NEVER = "never"
    READ = "read"  # a read: always
    WITH_KEY = "with key"  # a write: when the request carries its idempotency key


@dataclass(frozen=True)
class Route:
    upstream: Upstream
    anonymous: bool = False  # no token needed (rbac.PUBLIC): registration, login, refresh
    again: Again = Again.NEVER
    # The gateway's coarse check in front of the service's own, for calls the interceptor leaves
    # to the service (rbac.SERVICE_CHECKED_METHODS): the permission, and what the refusal names.
    needs: tuple[Permission, str] | None = None


AUTH, MESSAGING, DEVICES = Upstream.AUTH, Upstream.MESSAGING, Upstream.DEVICES
ARCHIVE, PATCH, FLEET = Upstream.ARCHIVE, Upstream.PATCH, Upstream.FLEET
ROLLOUT = Permission.PATCHES_ROLLOUT

# Gateway RPC -> the upstream RPC of the same name. Every call passes the same size and rate
# budgets (ChangePassword and Refresh cost auth the most).
ROUTES: Mapping[str, Route] = {
    # auth: sessions and accounts, which auth checks again
    "Register": Route(AUTH, anonymous=True),
    "Login": Route(AUTH, anonymous=True),
    "Refresh": Route(AUTH, anonymous=True),
    "Logout": Route(AUTH),
    "ChangePassword": Route(AUTH),
    "ListSessions": Route(AUTH),
    "RevokeSession": Route(AUTH),
    "CreateUser": Route(AUTH),
    "AssignRole": Route(AUTH),
    "SetAccountDisabled": Route(AUTH),
    "BeginTotpEnrolment": Route(AUTH),
    "ConfirmTotpEnrolment": Route(AUTH),
    "SetMfaRequired": Route(AUTH),
    "PublishDeviceKeys": Route(AUTH),
    "UploadOneTimeKeys": Route(AUTH),
    "ClaimOneTimeKey": Route(AUTH),
    "ListDevices": Route(AUTH),
    "RemoveDevice": Route(AUTH),
    "CreateInvite": Route(AUTH),
    "ResetMfa": Route(AUTH),
    "UnlockAccount": Route(AUTH),
    "RegenerateRecoveryCodes": Route(AUTH),
    "LookupUsers": Route(AUTH),
    # messaging: channels and messages (SendMessage, the hot path, is written out)
    "CreateChannel": Route(MESSAGING, again=Again.WITH_KEY),
    "CreateDirectChannel": Route(MESSAGING, again=Again.WITH_KEY),
    "ListMyChannels": Route(MESSAGING, again=Again.READ),
    "ListMessageVersions": Route(MESSAGING, again=Again.READ),
    "ListThread": Route(MESSAGING, again=Again.READ),
    "JoinChannel": Route(MESSAGING),
    "LeaveChannel": Route(MESSAGING),
    "EditMessage": Route(MESSAGING),
    "RedactMessage": Route(MESSAGING),
    "React": Route(MESSAGING),
    "MarkRead": Route(MESSAGING),
    "InviteMember": Route(MESSAGING),
    "KickMember": Route(MESSAGING),
    "BanMember": Route(MESSAGING),
    "UnbanMember": Route(MESSAGING),
    "SetMemberRole": Route(MESSAGING),
    "UpdateChannel": Route(MESSAGING),
    "ListInvitations": Route(MESSAGING),
    "DeclineInvitation": Route(MESSAGING),
    "SendToDevice": Route(DEVICES),
    "FetchToDevice": Route(DEVICES),
    # storage: one's own data (storage allows the caller's own only) and the audit trail
    "ExportUserData": Route(ARCHIVE),
    "QueryAudit": Route(ARCHIVE, needs=(Permission.AUDIT_READ, "querying the audit trail")),
    # the patch registry: the operator's console (a platform may run none)
    "ListInstances": Route(FLEET),
    "GetServiceHealth": Route(FLEET),
    "ListFindings": Route(PATCH),
    "ListReleases": Route(PATCH),
    "ListRollouts": Route(PATCH),
    "GetRollout": Route(PATCH),
    "ImportAdvisories": Route(PATCH, needs=(ROLLOUT, "importing advisories")),
    "PlanRollout": Route(PATCH, needs=(ROLLOUT, "planning a roll-out")),
    "ApproveRollout": Route(PATCH, needs=(ROLLOUT, "approving a roll-out")),
    "PauseRollout": Route(PATCH, needs=(ROLLOUT, "pausing a roll-out")),
    "ResumeRollout": Route(PATCH, needs=(ROLLOUT, "resuming a roll-out")),
    "RollbackRollout": Route(PATCH, needs=(ROLLOUT, "rolling back a roll-out")),
}

"""Roles, permissions and which permission each RPC needs: the one table every service enforces.

Least privilege by default: a new account is a `member`; an `operator` runs patch roll-outs
but cannot read messages; a `security-auditor` reads the audit trail and sessions and changes
nothing but its own session. Every service checks the permission of the RPC being called
against the caller's *current* role from its own access projection (parley_core.access), not
the role written in the token, so a revoke takes effect on the next call everywhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import StrEnum

from parley_core.topology import NODE_AGENT, PLATFORM_USER


class Permission(StrEnum):
    CHANNELS_CREATE = "channels.create"
    CHANNELS_JOIN = "channels.join"
    # Invite, kick, ban, rename, set member roles: the channel's own roles (owner, moderator)
    # decide in which channel; this permission decides who may moderate at all.
    CHANNELS_MODERATE = "channels.moderate"
    MESSAGES_READ = "messages.read"
    MESSAGES_SEND = "messages.send"
    # Logout, change one's own password, list and revoke one's own sessions.
    OWN_SESSIONS = "sessions.own"
    # Export or erase one's own data. Apart from OWN_SESSIONS so that a session still owing its
    # second factor (MFA_PENDING_PERMISSIONS) can neither copy nor destroy them.
    OWN_DATA = "data.own"
    SESSIONS_READ_ANY = "sessions.read_any"
    SESSIONS_REVOKE_ANY = "sessions.revoke_any"
    # Name user ids one already holds (LookupUsers; no search of the directory): whoever reads
    # messages, runs the fleet or audits it sees people by name rather than by id.
    USER_NAMES = "users.names"
    USERS_READ = "users.read"
    USERS_MANAGE = "users.manage"  # create, disable, re-enable accounts
    ROLES_ASSIGN = "roles.assign"
    AUDIT_READ = "audit.read"
    FLEET_READ = "fleet.read"
    PATCHES_ROLLOUT = "patches.rollout"
    DEVICE_KEYS = "keys.devices"  # publish one's device keys, claim others' one-time keys
    SIGNING_KEYS = "keys.signing"  # rotate and retire the access-token signing keys
    # Set a channel's retention policy (messaging's record, which its expiry checks follow).
    RETENTION_MANAGE = "retention.manage"


P = Permission

ROLES: tuple[str, ...] = ("owner", "admin", "security-auditor", "operator", "member", "guest")
DEFAULT_ROLE = "member"

_CHAT = frozenset(
    {P.CHANNELS_CREATE, P.CHANNELS_JOIN, P.CHANNELS_MODERATE, P.MESSAGES_READ, P.MESSAGES_SEND, P.DEVICE_KEYS}
)

ROLE_PERMISSIONS: dict[str, frozenset[Permission]] = {
    "owner": frozenset(Permission),
    # Only owners (and the platform identity) rotate the token signing keys.
    "admin": frozenset(Permission) - {P.SIGNING_KEYS},
    "security-auditor": frozenset(
        {P.OWN_SESSIONS, P.OWN_DATA, P.SESSIONS_READ_ANY, P.USERS_READ, P.USER_NAMES, P.AUDIT_READ, P.FLEET_READ}
    ),
    "operator": frozenset({P.OWN_SESSIONS, P.OWN_DATA, P.USER_NAMES, P.FLEET_READ, P.PATCHES_ROLLOUT}),
    "member": _CHAT | {P.OWN_SESSIONS, P.OWN_DATA, P.USER_NAMES},
    "guest": frozenset(
        {P.CHANNELS_JOIN, P.MESSAGES_READ, P.MESSAGES_SEND, P.OWN_SESSIONS, P.OWN_DATA, P.USER_NAMES, P.DEVICE_KEYS}
    ),
}

# Roles an admin may not hand out or take away; only an owner may.
OWNER_ONLY_ROLES = frozenset({"owner", "admin"})

CHANNEL_ROLES: tuple[str, ...] = ("owner", "moderator", "member")


# What a session may do while its role requires MFA and the login used none: enrol, log out.
MFA_PENDING_PERMISSIONS = frozenset({Permission.OWN_SESSIONS})


def permissions_of(role: str) -> frozenset[Permission]:
    """Unknown roles (from a newer version, say) get nothing rather than something."""
    return ROLE_PERMISSIONS.get(role, frozenset())


def roles_holding(permission: Permission) -> tuple[str, ...]:
    return tuple(role for role in ROLES if permission in ROLE_PERMISSIONS[role])


def _listed(roles: Iterable[str]) -> str:
    names = [role for role in ROLES if role in set(roles)]
    if not names:
        return "no role"
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def denial_message(what: str, permission: str, *, holders: Iterable[str], role: str) -> str:
    """Every permission refusal reads the same way and names who does hold the permission, so
    the reader knows whom to ask instead of guessing whether their own role is the one needed.

    e.g. "approving a roll-out needs the patch-approve permission, held by admin and operator;
    you are owner"."""
    return f"{what} needs the {permission} permission, held by {_listed(holders)}; you are {role}"


class AccountAction(StrEnum):
    """What one account may do to another; the value completes "only an owner may ... an owner"."""

    ASSIGN_ROLE = "change the role of"
    DISABLE = "disable or re-enable"
    RESET_MFA = "reset the two-factor authentication of"
    UNLOCK = "unlock"
    REVOKE_SESSIONS = "revoke the sessions of"


# The permission each action on another account needs (the RPC's own permission, or for
# RevokeSession, which also serves one's own sessions, the one for other people's).
ACCOUNT_ACTION_PERMISSIONS: dict[AccountAction, Permission] = {
    AccountAction.ASSIGN_ROLE: P.ROLES_ASSIGN,
    AccountAction.DISABLE: P.USERS_MANAGE,
    AccountAction.RESET_MFA: P.USERS_MANAGE,
    AccountAction.UNLOCK: P.USERS_MANAGE,
    AccountAction.REVOKE_SESSIONS: P.SESSIONS_REVOKE_ANY,
}


def may_act_on_account(actor_role: str, action: AccountAction, *, target_role: str) -> bool:
    """The one rule for every action on another account: the action's permission, and an owner's
    account is acted on by owners only (an admin may not disable, reset, re-role or sign out an
    owner). Acting on one's own account is another question (auth refuses it for these actions)."""
    if ACCOUNT_ACTION_PERMISSIONS[action] not in permissions_of(actor_role):
        return False
    return target_role != "owner" or actor_role == "owner"


def may_assign(actor_role: str, *, target_current_role: str, new_role: str) -> bool:
    """Changing a role is an action on the account (above), and only an owner hands out or takes
    away the owner and admin roles."""
    if not may_act_on_account(actor_role, AccountAction.ASSIGN_ROLE, target_role=target_current_role):
        return False
    if actor_role == "owner":
        return True
    return new_role not in OWNER_ONLY_ROLES and target_current_role not in OWNER_ONLY_ROLES


PUBLIC = None
"""Marks an RPC that needs no access token (registration, login, refresh)."""

# gRPC method -> the permission it needs, or PUBLIC. Services enforce this in the server
# interceptor; an RPC missing here is checked only by its servicer (the permission-matrix test
# fails until it is listed, so none is forgotten).
METHOD_PERMISSIONS: dict[str, Permission | None] = {
    # auth
    "/parley.auth.v1.AuthService/Register": PUBLIC,
    "/parley.auth.v1.AuthService/Login": PUBLIC,
    "/parley.auth.v1.AuthService/Refresh": PUBLIC,
    "/parley.auth.v1.AuthService/Logout": P.OWN_SESSIONS,
    "/parley.auth.v1.AuthService/ChangePassword": P.OWN_SESSIONS,
    "/parley.auth.v1.AuthService/ListSessions": P.OWN_SESSIONS,
    "/parley.auth.v1.AuthService/RevokeSession": P.OWN_SESSIONS,
    "/parley.auth.v1.AuthService/CreateUser": P.USERS_MANAGE,
    "/parley.auth.v1.AuthService/AssignRole": P.ROLES_ASSIGN,
    "/parley.auth.v1.AuthService/SetAccountDisabled": P.USERS_MANAGE,
    "/parley.auth.v1.AuthService/GetAccount": P.USERS_READ,
    "/parley.auth.v1.AuthService/BeginTotpEnrolment": P.OWN_SESSIONS,
    "/parley.auth.v1.AuthService/ConfirmTotpEnrolment": P.OWN_SESSIONS,
    "/parley.auth.v1.AuthService/SetMfaRequired": P.ROLES_ASSIGN,
    "/parley.auth.v1.AuthService/PublishDeviceKeys": P.DEVICE_KEYS,
    "/parley.auth.v1.AuthService/UploadOneTimeKeys": P.DEVICE_KEYS,
    "/parley.auth.v1.AuthService/ClaimOneTimeKey": P.DEVICE_KEYS,
    "/parley.auth.v1.AuthService/ListDevices": P.DEVICE_KEYS,
    "/parley.auth.v1.AuthService/RemoveDevice": P.DEVICE_KEYS,
    "/parley.auth.v1.AuthService/RotateSigningKey": P.SIGNING_KEYS,
    "/parley.auth.v1.AuthService/RetireSigningKey": P.SIGNING_KEYS,
    "/parley.auth.v1.AuthService/CreateInvite": P.USERS_MANAGE,
    "/parley.auth.v1.AuthService/ResetMfa": P.USERS_MANAGE,
    "/parley.auth.v1.AuthService/UnlockAccount": P.USERS_MANAGE,
    "/parley.auth.v1.AuthService/LiftSourceSlowdown": P.USERS_MANAGE,
    "/parley.auth.v1.AuthService/RequestErasure": P.OWN_DATA,  # one's own account only (auth checks)
    "/parley.auth.v1.AuthService/RegenerateRecoveryCodes": P.OWN_SESSIONS,
    # Usernames are public inside the platform: whoever reads messages, runs the fleet or audits it
    # sees people's names (for ids already held: there is no search here).
    "/parley.auth.v1.AuthService/LookupUsers": P.USER_NAMES,
    # messaging
    "/parley.messaging.v1.MessagingService/CreateChannel": P.CHANNELS_CREATE,
    "/parley.messaging.v1.MessagingService/JoinChannel": P.CHANNELS_JOIN,
    "/parley.messaging.v1.MessagingService/ListMyChannels": P.MESSAGES_READ,
    "/parley.messaging.v1.MessagingService/PostMessage": P.MESSAGES_SEND,
    "/parley.messaging.v1.MessagingService/EditMessage": P.MESSAGES_SEND,
    "/parley.messaging.v1.MessagingService/RedactMessage": P.MESSAGES_SEND,
    "/parley.messaging.v1.MessagingService/ListMessageVersions": P.MESSAGES_READ,
    "/parley.messaging.v1.MessagingService/LeaveChannel": P.CHANNELS_JOIN,
    "/parley.messaging.v1.MessagingService/CreateDirectChannel": P.CHANNELS_CREATE,
    "/parley.messaging.v1.MessagingService/InviteMember": P.CHANNELS_MODERATE,
    "/parley.messaging.v1.MessagingService/KickMember": P.CHANNELS_MODERATE,
    "/parley.messaging.v1.MessagingService/BanMember": P.CHANNELS_MODERATE,
    "/parley.messaging.v1.MessagingService/UnbanMember": P.CHANNELS_MODERATE,
    "/parley.messaging.v1.MessagingService/SetMemberRole": P.CHANNELS_MODERATE,
    "/parley.messaging.v1.MessagingService/UpdateChannel": P.CHANNELS_MODERATE,
    "/parley.messaging.v1.MessagingService/ListThread": P.MESSAGES_READ,
    "/parley.messaging.v1.MessagingService/React": P.MESSAGES_SEND,
    "/parley.messaging.v1.MessagingService/MarkRead": P.MESSAGES_READ,
    "/parley.messaging.v1.MessagingService/ListInvitations": P.MESSAGES_READ,
    "/parley.messaging.v1.MessagingService/DeclineInvitation": P.CHANNELS_JOIN,
    "/parley.messaging.v1.MessagingService/SetChannelRetention": P.RETENTION_MANAGE,
    "/parley.messaging.v1.DeviceKeyService/SendToDevice": P.DEVICE_KEYS,
    "/parley.messaging.v1.DeviceKeyService/FetchToDevice": P.DEVICE_KEYS,
    # storage
    "/parley.storage.v1.StorageService/GetChannelHistory": P.MESSAGES_READ,
    # patch registry
    "/parley.fleet.v1.FleetService/ListInstances": P.FLEET_READ,
    "/parley.fleet.v1.FleetService/GetServiceHealth": P.FLEET_READ,
    # What runs, its releases, findings and roll-outs: a user holding fleet.read reads them (the
    # gateway's certificate alone reads nothing here), or the platform identity (the CLI, node
    # agents: PLATFORM_METHODS). TufRepository, where releases are fetched, only agents ask.
    "/parley.patch.v1.PatchService/ListReleases": P.FLEET_READ,
    "/parley.patch.v1.PatchService/ListFindings": P.FLEET_READ,
    "/parley.patch.v1.PatchService/GetRollout": P.FLEET_READ,
    "/parley.patch.v1.PatchService/ListRollouts": P.FLEET_READ,
    "/parley.patch.v1.PatchService/TufRepository": P.FLEET_READ,
    # gateway
    "/parley.gateway.v1.Gateway/Register": PUBLIC,
    "/parley.gateway.v1.Gateway/Login": PUBLIC,
    "/parley.gateway.v1.Gateway/Refresh": PUBLIC,
    "/parley.gateway.v1.Gateway/CreateChannel": P.CHANNELS_CREATE,
    "/parley.gateway.v1.Gateway/JoinChannel": P.CHANNELS_JOIN,
    "/parley.gateway.v1.Gateway/ListMyChannels": P.MESSAGES_READ,
    "/parley.gateway.v1.Gateway/SendMessage": P.MESSAGES_SEND,
    "/parley.gateway.v1.Gateway/GetHistory": P.MESSAGES_READ,
    "/parley.gateway.v1.Gateway/Subscribe": P.MESSAGES_READ,
    "/parley.gateway.v1.Gateway/Logout": P.OWN_SESSIONS,
    "/parley.gateway.v1.Gateway/ChangePassword": P.OWN_SESSIONS,
    "/parley.gateway.v1.Gateway/ListSessions": P.OWN_SESSIONS,
    "/parley.gateway.v1.Gateway/RevokeSession": P.OWN_SESSIONS,
    "/parley.gateway.v1.Gateway/CreateUser": P.USERS_MANAGE,
    "/parley.gateway.v1.Gateway/AssignRole": P.ROLES_ASSIGN,
    "/parley.gateway.v1.Gateway/SetAccountDisabled": P.USERS_MANAGE,
    "/parley.gateway.v1.Gateway/BeginTotpEnrolment": P.OWN_SESSIONS,
    "/parley.gateway.v1.Gateway/ConfirmTotpEnrolment": P.OWN_SESSIONS,
    "/parley.gateway.v1.Gateway/SetMfaRequired": P.ROLES_ASSIGN,
    "/parley.gateway.v1.Gateway/EditMessage": P.MESSAGES_SEND,
    "/parley.gateway.v1.Gateway/RedactMessage": P.MESSAGES_SEND,
    "/parley.gateway.v1.Gateway/ListMessageVersions": P.MESSAGES_READ,
    "/parley.gateway.v1.Gateway/LeaveChannel": P.CHANNELS_JOIN,
    "/parley.gateway.v1.Gateway/CreateDirectChannel": P.CHANNELS_CREATE,
    "/parley.gateway.v1.Gateway/InviteMember": P.CHANNELS_MODERATE,
    "/parley.gateway.v1.Gateway/KickMember": P.CHANNELS_MODERATE,
    "/parley.gateway.v1.Gateway/BanMember": P.CHANNELS_MODERATE,
    "/parley.gateway.v1.Gateway/UnbanMember": P.CHANNELS_MODERATE,
    "/parley.gateway.v1.Gateway/SetMemberRole": P.CHANNELS_MODERATE,
    "/parley.gateway.v1.Gateway/UpdateChannel": P.CHANNELS_MODERATE,
    "/parley.gateway.v1.Gateway/ListThread": P.MESSAGES_READ,
    "/parley.gateway.v1.Gateway/React": P.MESSAGES_SEND,
    "/parley.gateway.v1.Gateway/MarkRead": P.MESSAGES_READ,
    "/parley.gateway.v1.Gateway/ListInvitations": P.MESSAGES_READ,
    "/parley.gateway.v1.Gateway/DeclineInvitation": P.CHANNELS_JOIN,
    "/parley.gateway.v1.Gateway/PublishDeviceKeys": P.DEVICE_KEYS,
    "/parley.gateway.v1.Gateway/UploadOneTimeKeys": P.DEVICE_KEYS,
    "/parley.gateway.v1.Gateway/ClaimOneTimeKey": P.DEVICE_KEYS,
    "/parley.gateway.v1.Gateway/ListDevices": P.DEVICE_KEYS,
    "/parley.gateway.v1.Gateway/RemoveDevice": P.DEVICE_KEYS,
    "/parley.gateway.v1.Gateway/SendToDevice": P.DEVICE_KEYS,
    "/parley.gateway.v1.Gateway/FetchToDevice": P.DEVICE_KEYS,
    "/parley.gateway.v1.Gateway/CreateInvite": P.USERS_MANAGE,
    "/parley.gateway.v1.Gateway/ResetMfa": P.USERS_MANAGE,
    "/parley.gateway.v1.Gateway/UnlockAccount": P.USERS_MANAGE,
    "/parley.gateway.v1.Gateway/RegenerateRecoveryCodes": P.OWN_SESSIONS,
    "/parley.gateway.v1.Gateway/LookupUsers": P.USER_NAMES,
    "/parley.gateway.v1.Gateway/FindUsers": P.MESSAGES_READ,
    # One's own data (export, erasure): every account may; storage checks it is the caller's own.
    "/parley.gateway.v1.Gateway/ExportUserData": P.OWN_DATA,
    "/parley.gateway.v1.Gateway/EraseUserData": P.OWN_DATA,
    # The operator's console reads the registry's fleet, findings and roll-outs (the registry
    # checks fleet.read again itself: its entries above).
    "/parley.gateway.v1.Gateway/ListInstances": P.FLEET_READ,
    "/parley.gateway.v1.Gateway/GetServiceHealth": P.FLEET_READ,
    "/parley.gateway.v1.Gateway/ListFindings": P.FLEET_READ,
    "/parley.gateway.v1.Gateway/ListReleases": P.FLEET_READ,
    "/parley.gateway.v1.Gateway/ListRollouts": P.FLEET_READ,
    "/parley.gateway.v1.Gateway/GetRollout": P.FLEET_READ,
    # The compliance reports filed in the data folder, which the gateway reads itself.
    "/parley.gateway.v1.Gateway/ListComplianceReports": P.FLEET_READ,
    "/parley.gateway.v1.Gateway/GetComplianceReport": P.FLEET_READ,
}

# RPCs whose service applies its own rules on the calling peer and user (storage's archive API:
# services read back the streams NATS lets them read, the operator everything, auditors the audit
# queries; see parley_storage.access). The interceptor leaves them to it; each such servicer
# still reads the caller through TokenVerifier, so disabled accounts and revoked sessions hold.
SERVICE_CHECKED_METHODS = frozenset(
    {
        "/parley.storage.v1.StorageArchiveService/ReadArchivedStream",
        "/parley.storage.v1.StorageArchiveService/GetAggregateEvents",
        "/parley.storage.v1.StorageArchiveService/QueryAudit",
        "/parley.storage.v1.StorageArchiveService/GetArchiveLag",
        "/parley.storage.v1.StorageArchiveService/ExportUserData",
        "/parley.storage.v1.StorageArchiveService/EraseUserData",
        "/parley.storage.v1.StorageArchiveService/SetRetentionPolicy",
        "/parley.storage.v1.StorageArchiveService/ListRetentionPolicies",
        "/parley.storage.v1.StorageArchiveService/RotateKeyEncryptionKey",
        "/parley.storage.v1.StorageArchiveService/GetSchemaVersions",
        "/parley.storage.v1.StorageArchiveService/GetAuditChainState",
        "/parley.storage.v1.StorageArchiveService/WatchSecurityEvents",
        # The gateway's waiting sends in one call: the gateway's alone (topology.GRPC_METHOD_CALLERS);
        # messaging checks each item's own token for messages.send (parley_messaging.post_batches).
        "/parley.messaging.v1.MessagingService/PostMessages",
        # The patch registry checks the operator/admin roles itself (parley_patch_registry.registry),
        # with the caller's current role; who alone may report roll-out steps (node agents) or
        # publish base releases (`parley up`) is topology.GRPC_METHOD_CALLERS'.
        "/parley.patch.v1.PatchService/PublishRelease",
        "/parley.patch.v1.PatchService/PublishBaseRelease",
        "/parley.patch.v1.PatchService/ImportAdvisories",
        "/parley.patch.v1.PatchService/PlanRollout",
        "/parley.patch.v1.PatchService/ApproveRollout",
        "/parley.patch.v1.PatchService/PauseRollout",
        "/parley.patch.v1.PatchService/ResumeRollout",
        "/parley.patch.v1.PatchService/RollbackRollout",
        "/parley.patch.v1.PatchService/RevertService",
        "/parley.patch.v1.PatchService/ReportInstanceStarted",
        "/parley.patch.v1.PatchService/ReportInstanceDrained",
        "/parley.patch.v1.PatchService/ReportRolledBack",
        "/parley.patch.v1.PatchService/ReportInstanceExited",
        "/parley.patch.v1.PatchService/PrepareRelease",
        "/parley.patch.v1.PatchService/SetPublisherKey",
        "/parley.patch.v1.PatchService/PrepareRootRotation",
        "/parley.patch.v1.PatchService/RotateRoot",
        # The console's changes and audit queries: the gateway refuses whoever lacks
        # patches.rollout (audit.read) outright, then the registry's roll-out roles and
        # second-person rule, and storage's auditor rule, decide (narrower than this table: the
        # registry refuses an owner, storage anyone but a security-auditor).
        "/parley.gateway.v1.Gateway/ImportAdvisories",
        "/parley.gateway.v1.Gateway/PlanRollout",
        "/parley.gateway.v1.Gateway/ApproveRollout",
        "/parley.gateway.v1.Gateway/PauseRollout",
        "/parley.gateway.v1.Gateway/ResumeRollout",
        "/parley.gateway.v1.Gateway/RollbackRollout",
        "/parley.gateway.v1.Gateway/QueryAudit",
        "/parley.gateway.v1.Gateway/VerifyAudit",
        "/parley.gateway.v1.Gateway/WatchSecurityEvents",
    }
)

# The patch registry's reads (fleet.read with a token): `parley patch list|status`, `parley
# advisories`, the compliance report and node agents read them by certificate alone.
REGISTRY_READS = frozenset(
    {
        "/parley.patch.v1.PatchService/ListReleases",
        "/parley.patch.v1.PatchService/ListFindings",
        "/parley.patch.v1.PatchService/GetRollout",
        "/parley.patch.v1.PatchService/ListRollouts",
        "/parley.patch.v1.PatchService/TufRepository",
    }
)

# Internal RPCs the platform identity (operator tooling over mutual TLS, no user token) may
# call: how the first owner is created on a fresh installation.
PLATFORM_METHODS = (
    frozenset(
        {
            "/parley.auth.v1.AuthService/CreateUser",
            "/parley.auth.v1.AuthService/AssignRole",
            "/parley.auth.v1.AuthService/SetAccountDisabled",
            "/parley.auth.v1.AuthService/GetAccount",
            "/parley.auth.v1.AuthService/LookupUsers",  # names in the auditor's `parley audit query`
            "/parley.auth.v1.AuthService/SetMfaRequired",
            "/parley.auth.v1.AuthService/RotateSigningKey",
            "/parley.auth.v1.AuthService/RetireSigningKey",
            "/parley.auth.v1.AuthService/CreateInvite",
            "/parley.auth.v1.AuthService/ResetMfa",
            "/parley.auth.v1.AuthService/UnlockAccount",
            "/parley.auth.v1.AuthService/LiftSourceSlowdown",
            "/parley.auth.v1.AuthService/RequestErasure",
            "/parley.messaging.v1.MessagingService/SetChannelRetention",
            "/parley.fleet.v1.FleetService/ListInstances",
        }
    )
    | REGISTRY_READS
)

# Internal RPCs a joined host's node agent (topology.NODE_AGENT's certificate) may call without a
# user token: following roll-outs (the fleet view, the roll-outs, where releases are fetched), the
# reads its host's CLI shows (`parley fleet`, `parley patch list|status`, `parley advisories`), and
# making its prober account (auth allows it a prober's name and the member role only). Its step
# reports are its own and the platform's alone (topology.GRPC_METHOD_CALLERS). With a user's
# token it acts as that user, as any peer does.
NODE_AGENT_METHODS = (
    frozenset(
        {
            "/parley.fleet.v1.FleetService/ListInstances",
            "/parley.auth.v1.AuthService/CreateUser",
        }
    )
    | REGISTRY_READS
)

# Who may call which permission-checked RPCs by certificate alone, without a user token.
TOKENLESS_METHODS: Mapping[str, frozenset[str]] = {PLATFORM_USER: PLATFORM_METHODS, NODE_AGENT: NODE_AGENT_METHODS}

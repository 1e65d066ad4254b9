"""Who may do what to releases and roll-outs: the patch permissions and the roles that hold them."""

from __future__ import annotations

from parley_core.errors import PermissionDenied
from parley_core.rbac import denial_message

# Roles allowed to approve a roll-out (the patch-approve permission) until auth's RBAC lands.
APPROVER_ROLES = frozenset({"operator", "admin"})
PUBLISHER_ROLES = frozenset({"operator", "admin"})


PATCH_PERMISSIONS = {"patch-rollout": PUBLISHER_ROLES, "patch-approve": APPROVER_ROLES}


def require_patch_role(role: str, what: str, *, permission: str = "patch-rollout") -> None:
    holders = PATCH_PERMISSIONS[permission]
    if role not in holders:
        raise PermissionDenied(denial_message(what, permission, holders=holders, role=role))

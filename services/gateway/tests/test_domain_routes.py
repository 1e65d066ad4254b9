"""The routes table's decisions (parley_gateway.domain.routes), without servers: which service a
plain call goes to, whether it needs a token, whether it may be sent again, and the gateway's own
permission check in front of a service-checked call."""

from __future__ import annotations

from parley_core.rbac import METHOD_PERMISSIONS, PUBLIC, SERVICE_CHECKED_METHODS, Permission
from parley_gateway.domain.routes import ROUTES, Again, Upstream

GATEWAY = "parley.gateway.v1.Gateway"


def test_only_registration_login_and_refresh_go_without_a_token() -> None:
    assert {name for name, route in ROUTES.items() if route.anonymous} == {"Register", "Login", "Refresh"}


def test_an_anonymous_route_is_one_rbac_lets_in_without_a_token() -> None:
    for name, route in ROUTES.items():
        method = f"/{GATEWAY}/{name}"
        public = method in METHOD_PERMISSIONS and METHOD_PERMISSIONS[method] is PUBLIC
        assert route.anonymous == public, name


def test_only_messaging_calls_are_sent_again_and_writes_only_with_their_key() -> None:
    again = {name: route.again for name, route in ROUTES.items() if route.again is not Again.NEVER}
    assert {ROUTES[name].upstream for name in again} == {Upstream.MESSAGING}
    assert again["ListMyChannels"] is Again.READ
    assert again["CreateChannel"] is Again.WITH_KEY
    assert ROUTES["EditMessage"].again is Again.NEVER  # no idempotency key: a second try could edit twice


def test_every_service_checked_route_names_the_gateways_own_check() -> None:
    for name, route in ROUTES.items():
        if f"/{GATEWAY}/{name}" in SERVICE_CHECKED_METHODS:
            assert route.needs is not None, name
    assert ROUTES["QueryAudit"].needs == (Permission.AUDIT_READ, "querying the audit trail")
    assert ROUTES["PlanRollout"].needs == (Permission.PATCHES_ROLLOUT, "planning a roll-out")
    assert ROUTES["ListRollouts"].needs is None  # a read: the interceptor's fleet.read check is enough

"""The routes table (parley_gateway.domain.routes) bound to the stubs of this platform's services."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import grpc

from parley_gateway.domain.routes import ROUTES, Again, Route, Upstream

Method = grpc.aio.UnaryUnaryMultiCallable[Any, Any]


@dataclass(frozen=True)
class Bound:
    """A route with the stubs it calls on this platform."""

    route: Route
    method: Method | None  # None: the platform runs no such service (only the registry is optional)
    again: Method | None  # the same RPC on messaging's stable door, for a route that may send again


def bind(upstreams: Mapping[Upstream, object | None], *, stable: object | None) -> dict[str, Bound]:
    """Each route with its upstream's method; `stable`: messaging through its stable door, if any."""
    bound = {}
    for name, route in ROUTES.items():
        stub = upstreams[route.upstream]
        again = getattr(stable, name) if stable is not None and route.again is not Again.NEVER else None
        bound[name] = Bound(route, None if stub is None else getattr(stub, name), again)
    return bound

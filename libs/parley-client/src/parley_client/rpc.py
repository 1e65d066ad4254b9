"""A plain call of the gateway declared once: its request builder, its answer, how it is retried.

The client has dozens of calls that only build a request, call the gateway and pick the answer
apart. Each is declared with `@rpc` over a static request builder; the builder's typed signature
and docstring are what users call and read, so their editors and mypy see the real parameters
(ParamSpec carries them through), and the plumbing (token, rate-limit waits, retries of
ambiguous writes) is the session's, written once.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Coroutine
from typing import Any, Generic, ParamSpec, TypeVar, overload

from google.protobuf.message import Message
from parley.gateway.v1 import gateway_pb2

from parley_client.session import DEFAULT_TIMEOUT_S, WRITE_TIMEOUT_S, GatewaySession

P = ParamSpec("P")
R = TypeVar("R")
M = TypeVar("M", bound=Message)
T = TypeVar("T")

GATEWAY = gateway_pb2.DESCRIPTOR.services_by_name["Gateway"]


class Rpc(Generic[P, R]):
    """On a client, a method `(*builder's parameters) -> R` that calls the gateway's `method`."""

    def __init__(
        self, method: str, request: Callable[P, Message], answer: Callable[[Any], R], *, write: bool, timeout: float
    ) -> None:
        if method not in GATEWAY.methods_by_name:
            raise TypeError(f"the Gateway service has no method {method!r}")
        self.method = method
        self.request = request
        self.answer = answer
        self.write = write
        self.timeout = timeout
        self.__doc__ = request.__doc__
        self.name = request.__name__

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name  # a builder may serve two calls (a kick's request also bans)

    @overload
    def __get__(self, client: None, owner: type) -> Rpc[P, R]: ...
    @overload
    def __get__(self, client: GatewaySession, owner: type) -> Callable[P, Coroutine[Any, Any, R]]: ...
    def __get__(self, client: GatewaySession | None, owner: type) -> Rpc[P, R] | Callable[P, Coroutine[Any, Any, R]]:
        if client is None:
            return self
        stub_method = getattr(client._stub, self.method)

        @functools.wraps(self.request)
        async def call(*args: P.args, **kwargs: P.kwargs) -> R:
            request = self.request(*args, **kwargs)
            if self.write:
                response = await client._write(stub_method, request, timeout=self.timeout)
            else:
                response = await client._call(stub_method, request, self.timeout)
            return self.answer(response)

        call.__name__ = self.name
        call.__qualname__ = f"{type(client).__name__}.{self.name}"
        # help() shows the builder's parameters, not its return type (the request, not the answer).
        call.__signature__ = inspect.signature(self.request).replace(  # type: ignore[attr-defined]
            return_annotation=inspect.Signature.empty
        )
        return call


def rpc(
    method: str, answer: Callable[[Any], R], *, write: bool = False, timeout: float | None = None
) -> Callable[[Callable[P, Message]], Rpc[P, R]]:
    """Declare a plain call: `method` of the Gateway service with the decorated builder's request.

    `write`: safe to repeat (same request, same result), so an ambiguous answer is retried until
    `timeout` (WRITE_TIMEOUT_S) and only then raises OutcomeUnknown.
    """

    def declare(request: Callable[P, Message]) -> Rpc[P, R]:
        if isinstance(request, staticmethod):
            request = request.__func__
        chosen = timeout if timeout is not None else (WRITE_TIMEOUT_S if write else DEFAULT_TIMEOUT_S)
        return Rpc(method, request, answer, write=write, timeout=chosen)

    return declare


def whole(kind: type[M]) -> Callable[[Any], M]:
    """The answer is the response itself, a `kind`."""

    def answer(response: Any) -> M:
        assert isinstance(response, kind), f"the gateway answered a {type(response).__name__}, not a {kind.__name__}"
        return response

    return answer


def items(field: str, kind: type[T]) -> Callable[[Any], list[T]]:
    """The answer is the response's repeated `field` of `kind`s, as a list."""

    def answer(response: Any) -> list[T]:
        return list(getattr(response, field))

    return answer


def one(field: str, kind: type[T]) -> Callable[[Any], T]:
    """The answer is the response's `field`, a `kind`."""

    def answer(response: Any) -> T:
        value = getattr(response, field)
        assert isinstance(value, kind)
        return value

    return answer


def nothing(response: Any) -> None:
    """The call answers nothing worth returning (an empty response)."""

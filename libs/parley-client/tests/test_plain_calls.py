"""The client's plain calls are declared, not written out: the declarations must match the API."""

from __future__ import annotations

import inspect
import typing

import grpc
import pytest
from parley.messaging.v1 import messaging_pb2

from parley_client import ParleyClient
from parley_client.plain_calls import PlainCalls
from parley_client.rpc import GATEWAY, Rpc, nothing


def declared() -> dict[str, Rpc[..., object]]:
    return {name: attr for name, attr in vars(PlainCalls).items() if isinstance(attr, Rpc)}


def test_every_plain_call_builds_the_request_its_gateway_method_takes() -> None:
    calls = declared()
    assert len(calls) >= 25
    for name, call in calls.items():
        request = typing.get_type_hints(call.request)["return"]
        expected = GATEWAY.methods_by_name[call.method].input_type
        assert request.DESCRIPTOR is expected, f"{name} builds {request.__name__}, {call.method} takes {expected.name}"


def test_a_call_on_a_method_the_gateway_lacks_is_refused_when_declared() -> None:
    with pytest.raises(TypeError, match="NoSuchMethod"):
        Rpc("NoSuchMethod", messaging_pb2.ListMyChannelsRequest, nothing, write=False, timeout=1.0)


async def test_a_plain_call_shows_its_builders_signature_and_docstring() -> None:
    client = ParleyClient(grpc.aio.insecure_channel("127.0.0.1:1"))  # never connected: nothing is called
    try:
        shown = inspect.signature(client.kick)
        assert list(shown.parameters) == ["channel_id", "user_id", "reason"]
        assert shown.return_annotation is inspect.Signature.empty  # not the request the builder returns
        assert (client.kick.__name__, client.ban.__name__) == ("kick", "ban")
        assert client.join_channel.__doc__ == ParleyClient.join_channel.__doc__
        assert "exactly one channel" in (ParleyClient.join_channel.__doc__ or "")
    finally:
        await client.close()

"""The gateway's browser endpoint (parley_gateway.web): the Gateway API over the Connect
protocol, with TLS, through real servers (every service, a real nats-server), called by the
Connect project's own Python client as a browser's fetch() would call it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from connectrpc.client import ConnectClient, ResponseMetadata
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from parley.auth.v1 import auth_pb2
from parley.gateway.v1 import gateway_pb2
from parley.messaging.v1 import messaging_pb2
from parley.storage.v1 import storage_pb2
from pyqwest import Client, HTTPTransport

from parley_core.pki import Pki
from parley_gateway.web_api import ProtoBinaryCodec, _method_info
from parley_gateway.web_calls import SERVICE
from parley_gateway.web_sessions import REFRESH_COOKIE, SESSION_HINT_COOKIE
from parley_testing.nats import NatsTestServer
from parley_testing.stack import PASSWORD, Stack, bearer, start_stack, stop_stack

TIMEOUT_S = 20.0
USER_BURST = 40
METHODS = {m.name: _method_info(m) for m in SERVICE.methods}


@dataclass
class Browser:
    """A Connect client of the gateway's browser address."""

    client: ConnectClient
    origin: str

    async def call(self, method: str, request: Any, token: str = "", **headers: str) -> Any:
        sent = dict(headers)
        if token:
            sent["authorization"] = f"Bearer {token}"
        return await self.client.execute_unary(
            request=request, method=METHODS[method], headers=sent, timeout_ms=int(TIMEOUT_S * 1000)
        )

    def stream(self, request: gateway_pb2.SubscribeRequest, token: str) -> AsyncIterator[gateway_pb2.ClientEvent]:
        return self.client.execute_server_stream(
            request=request, method=METHODS["Subscribe"], headers={"authorization": f"Bearer {token}"}
        )


@dataclass
class WebStack:
    stack: Stack
    browser: Browser


@pytest_asyncio.fixture
async def web(
    monkeypatch: pytest.MonkeyPatch, nats_server: NatsTestServer, pki: Pki, tmp_path: Path
) -> AsyncIterator[WebStack]:
    monkeypatch.setenv("PARLEY_WEB_LISTEN_ADDRESS", "127.0.0.1:0")
    monkeypatch.setenv("PARLEY_GATEWAY_USER_RATE", "1")
    monkeypatch.setenv("PARLEY_GATEWAY_USER_BURST", str(USER_BURST))
    stack, running = await start_stack(nats_server, pki, tmp_path, registration="open")
    listener = stack.app("gateway").browser
    assert listener is not None, "the gateway did not open its browser address"
    http = Client(HTTPTransport(tls_ca_cert=pki.ca_pem()))
    origin = f"https://127.0.0.1:{listener.port}"
    # The platform's own CA, as a browser that trusts it.
    client = ConnectClient(origin, codec=ProtoBinaryCodec(), http_client=http)  # type: ignore[arg-type]
    try:
        yield WebStack(stack, Browser(client, origin))
    finally:
        await stop_stack(stack, running)
    gateway_task = running[-1][1]  # started last
    assert gateway_task.result() == 0, "the gateway did not stop cleanly with its browser listener"


async def register(browser: Browser, name: str) -> auth_pb2.LoginResponse:
    await browser.call("Register", auth_pb2.RegisterRequest(username=name, password=PASSWORD))
    login: auth_pb2.LoginResponse = await browser.call("Login", auth_pb2.LoginRequest(username=name, password=PASSWORD))
    return login


async def test_connect_calls_pass_the_same_checks_and_reach_the_same_services(web: WebStack) -> None:
    browser = web.browser
    alice = await register(browser, "alice")
    assert alice.access_token
    assert alice.refresh_token

    with pytest.raises(ConnectError) as refused:
        await browser.call("ListMyChannels", messaging_pb2.ListMyChannelsRequest())
    assert refused.value.code == Code.UNAUTHENTICATED

    channel = await browser.call("CreateChannel", messaging_pb2.CreateChannelRequest(name="web"), alice.access_token)
    sent = await browser.call(
        "SendMessage",
        messaging_pb2.PostMessageRequest(channel_id=channel.channel_id, body="<b>hello</b>", idempotency_key="k1"),
        alice.access_token,
    )
    # What the browser sent is what a native gRPC client reads.
    history = await web.stack.gateway().GetHistory(
        storage_pb2.GetChannelHistoryRequest(channel_id=channel.channel_id),
        metadata=bearer(alice.access_token),
        timeout=TIMEOUT_S,
    )
    assert [m.body for m in history.messages] == ["<b>hello</b>"]
    assert history.messages[0].channel_seq == sent.channel_seq

    # The servicer's own admission: the request size limit, then the per-user budget.
    with pytest.raises(ConnectError) as too_big:
        await browser.call(
            "SendMessage",
            messaging_pb2.PostMessageRequest(channel_id=channel.channel_id, body="x" * (70 * 1024)),
            alice.access_token,
        )
    assert too_big.value.code == Code.RESOURCE_EXHAUSTED
    assert "the limit is" in too_big.value.message

    # A domain refusal keeps its precise status and message.
    with pytest.raises(ConnectError) as not_member:
        await browser.call(
            "GetHistory", storage_pb2.GetChannelHistoryRequest(channel_id="no-such-channel"), alice.access_token
        )
    assert not_member.value.code == Code.PERMISSION_DENIED

    limited = None
    for _ in range(USER_BURST + 5):
        try:
            await browser.call("ListMyChannels", messaging_pb2.ListMyChannelsRequest(), alice.access_token)
        except ConnectError as exc:
            limited = exc
            break
    assert limited is not None, "the per-user budget never ran out over Connect"
    assert limited.code == Code.RESOURCE_EXHAUSTED
    assert "too many requests from this user" in limited.message


async def test_live_events_stream_and_resume_with_nothing_missed(web: WebStack) -> None:
    browser = web.browser
    alice = await register(browser, "alice")
    bob = await register(browser, "bob")
    channel = await browser.call("CreateChannel", messaging_pb2.CreateChannelRequest(name="live"), alice.access_token)
    await browser.call("JoinChannel", messaging_pb2.JoinChannelRequest(channel_id=channel.channel_id), bob.access_token)
    native = web.stack.gateway()

    async def send(text: str) -> None:
        await native.SendMessage(
            messaging_pb2.PostMessageRequest(channel_id=channel.channel_id, body=text, idempotency_key=text),
            metadata=bearer(alice.access_token),
            timeout=TIMEOUT_S,
        )

    stream = browser.stream(gateway_pb2.SubscribeRequest(), bob.access_token)
    first = await asyncio.wait_for(anext(stream), TIMEOUT_S)
    assert first.WhichOneof("event") == "ready"
    assert channel.channel_id in first.ready.channel_ids
    await send("one")
    event = await asyncio.wait_for(anext(stream), TIMEOUT_S)
    while event.WhichOneof("event") != "message":  # bob's own join may come first
        event = await asyncio.wait_for(anext(stream), TIMEOUT_S)
    assert event.message.body == "one"
    last_position = event.message.position
    with contextlib.suppress(Exception):
        await stream.aclose()  # type: ignore[attr-defined]

    # Sent while the browser was away: the resumed stream starts with them, once each.
    await send("two")
    await send("three")
    resumed = browser.stream(
        gateway_pb2.SubscribeRequest(
            resume=[gateway_pb2.ResumeFrom(channel_id=channel.channel_id, after_position=last_position)]
        ),
        bob.access_token,
    )
    assert (await asyncio.wait_for(anext(resumed), TIMEOUT_S)).WhichOneof("event") == "ready"
    texts = []
    while len(texts) < 2:
        item = await asyncio.wait_for(anext(resumed), TIMEOUT_S)
        if item.WhichOneof("event") == "message":
            texts.append(item.message.body)
    assert texts == ["two", "three"]
    with contextlib.suppress(Exception):
        await resumed.aclose()  # type: ignore[attr-defined]


async def test_refresh_token_lives_in_an_httponly_cookie_that_only_this_origin_can_use(web: WebStack) -> None:
    browser = web.browser
    await register(browser, "carol")
    # As the web app logs in: its page's Origin, and the response's headers read by the test.
    client = browser.client
    seen: dict[str, list[str]] = {}

    async def login_from_page() -> auth_pb2.LoginResponse:
        with ResponseMetadata() as meta:
            response: auth_pb2.LoginResponse = await client.execute_unary(
                request=auth_pb2.LoginRequest(username="carol", password=PASSWORD),
                method=METHODS["Login"],
                headers={"origin": browser.origin},
            )
        seen["set-cookie"] = list(meta.headers.getall("set-cookie"))
        return response

    login = await login_from_page()
    assert login.access_token
    assert login.refresh_token == "", "the refresh token reached the page's script"
    cookie, hint = seen["set-cookie"]
    assert cookie.startswith(f"{REFRESH_COOKIE}=")
    for attribute in ("HttpOnly", "Secure", "SameSite=Strict", "Path=/"):
        assert attribute in cookie
    # The page may read that it has a session (to ask for a token only then), never the token.
    assert hint.startswith(f"{SESSION_HINT_COOKIE}=1;")
    assert "HttpOnly" not in hint
    assert "Secure" in hint
    token_cookie = cookie.split(";", 1)[0]

    refreshed = await browser.call("Refresh", auth_pb2.RefreshRequest(), cookie=token_cookie, origin=browser.origin)
    assert refreshed.access_token
    assert refreshed.access_token != login.access_token

    # Another site's page (or no page at all) cannot spend the cookie.
    for origin in ("https://evil.example", ""):
        headers = {"cookie": token_cookie, **({"origin": origin} if origin else {})}
        with pytest.raises(ConnectError) as refused:
            await browser.call("Refresh", auth_pb2.RefreshRequest(), **headers)
        assert refused.value.code == Code.PERMISSION_DENIED

"""The first message end to end, through the platform started as `make run` starts it."""

from __future__ import annotations

import asyncio
import json
import uuid

import grpc
import pytest
from parley.auth.v1.events_pb2 import UserRegistered

from parley_client import ParleyClient, ParleyError
from parley_core.envelope import NewEvent, seal
from parley_testing.platform import RunningPlatform
from parley_testing.stack import PASSWORD
from parley_testing.waiting import eventually, wait_until

pytestmark = pytest.mark.e2e


async def history_bodies(client: ParleyClient, channel_id: str, *, expect: int, timeout: float = 20.0) -> list[str]:
    """History is served from the archive, which trails the send by the archive lag: wait for it."""

    async def bodies() -> list[str] | None:
        page = await client.history(channel_id)
        return [m.body for m in page.messages] if len(page.messages) >= expect else None

    return await eventually(bodies, f"{expect} messages in history", timeout)


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


async def test_message_reaches_live_stream_and_history_and_survives_restart(platform: RunningPlatform) -> None:
    alice_name, bob_name = unique("alice"), unique("bob")
    alice = await platform.new_user(alice_name)
    bob = await platform.new_user(bob_name)
    channel = await alice.create_channel("general")
    joined = await bob.join_channel(channel.channel_id)
    assert set(joined.member_ids) == {alice.user_id, bob.user_id}

    live = bob.subscribe([channel.channel_id])
    assert await asyncio.wait_for(live.ready(), 10) == [channel.channel_id]
    sent = await alice.send(channel.channel_id, "hello bob, over TLS")
    assert sent.channel_seq == 1

    received = await asyncio.wait_for(anext(aiter(live)), 10)
    assert (received.message_id, received.body, received.sender_id) == (sent.message_id, sent.body, alice.user_id)
    assert received.sender_name == alice_name
    live.cancel()

    assert await history_bodies(bob, channel.channel_id, expect=1) == ["hello bob, over TLS"]
    for client in (alice, bob):
        await client.close()

    assert platform.stop() == 0
    for service in ("gateway", "patch-registry", "storage", "messaging", "auth"):
        assert f"{service} stopped (exit 0)" in platform.output(), platform.output()
    assert "nats-server stopped" in platform.output()
    assert not (platform.data_dir / "client.json").exists()
    stopped = platform.cli("status", check=False)
    assert stopped.returncode == 2
    assert "not running" in stopped.stderr
    platform.start()
    bob = platform.client()
    await bob.login(bob_name, PASSWORD)
    page = await bob.history(channel.channel_id)
    assert [(m.channel_seq, m.body) for m in page.messages] == [(1, "hello bob, over TLS")]
    # A second start keeps accounts, channels and the live path too.
    alice = platform.client()
    await alice.login(alice_name, PASSWORD)
    live = bob.subscribe([channel.channel_id])
    await asyncio.wait_for(live.ready(), 10)
    again = await alice.send(channel.channel_id, "still here after a restart")
    assert again.channel_seq == 2
    assert (await asyncio.wait_for(anext(aiter(live)), 10)).body == "still here after a restart"
    live.cancel()
    await alice.close()
    await bob.close()


async def test_one_send_is_one_trace_across_gateway_messaging_and_storage(platform: RunningPlatform) -> None:
    alice = await platform.new_user(unique("tracer"))
    channel = await alice.create_channel("traced")
    marker = unique("trace-me-")
    await alice.send(channel.channel_id, marker)
    await history_bodies(alice, channel.channel_id, expect=1)
    await alice.close()

    def spans(service: str) -> list[dict[str, str]]:
        found = []
        for line in platform.log(service).splitlines():
            if line.startswith('{"span"'):
                found.append(json.loads(line))
        return found

    sends = [s for s in spans("gateway") if s["span"].endswith("/SendMessage")]
    assert sends, "the gateway recorded no SendMessage span"
    trace_ids = {s["trace_id"] for s in sends}
    messaging_traces = {s["trace_id"] for s in spans("messaging") if s["span"].endswith("/PostMessage")}
    storage_traces = {
        s["trace_id"] for s in spans("storage") if s["span"].startswith("archive parley.messaging.v1.MessagePosted")
    }
    shared = trace_ids & messaging_traces & storage_traces
    assert shared, "no trace id runs through gateway, messaging and storage"


async def test_bad_input_gets_precise_status(platform: RunningPlatform) -> None:
    name = unique("carol")
    carol = await platform.new_user(name)
    outsider = await platform.new_user(unique("dave"))
    channel = await carol.create_channel("private-ish")

    async def status_of(call: object) -> grpc.StatusCode:
        with pytest.raises(ParleyError) as caught:
            await call  # type: ignore[misc]
        assert "Traceback" not in caught.value.message
        return caught.value.code

    assert await status_of(carol.send(channel.channel_id, "   ")) == grpc.StatusCode.INVALID_ARGUMENT
    assert await status_of(carol.send(channel.channel_id, "x" * 5000)) == grpc.StatusCode.INVALID_ARGUMENT
    assert await status_of(outsider.send(channel.channel_id, "hi")) == grpc.StatusCode.PERMISSION_DENIED
    assert await status_of(outsider.history(channel.channel_id)) == grpc.StatusCode.PERMISSION_DENIED
    assert await status_of(carol.join_channel("no-such-channel")) == grpc.StatusCode.NOT_FOUND
    assert await status_of(carol.register(name.upper(), PASSWORD)) == grpc.StatusCode.ALREADY_EXISTS
    assert await status_of(carol.register(unique("eve"), "short")) == grpc.StatusCode.INVALID_ARGUMENT
    assert await status_of(carol.login(name, "wrong-password-here")) == grpc.StatusCode.UNAUTHENTICATED

    anonymous = platform.client()
    assert await status_of(anonymous.my_channels()) == grpc.StatusCode.UNAUTHENTICATED
    token = carol.access_token
    assert token is not None
    head, payload, signature = token.split(".")
    tampered = ".".join((head, payload, ("A" if signature[0] != "A" else "B") + signature[1:]))
    anonymous.use_token(tampered)
    assert await status_of(anonymous.my_channels()) == grpc.StatusCode.UNAUTHENTICATED
    for client in (carol, outsider, anonymous):
        await client.close()


async def test_idempotent_send_returns_the_first_message(platform: RunningPlatform) -> None:
    frank = await platform.new_user(unique("frank"))
    channel = await frank.create_channel("retries")
    first = await frank.send(channel.channel_id, "once", idempotency_key="key-1")
    retry = await frank.send(channel.channel_id, "once", idempotency_key="key-1")
    other = await frank.send(channel.channel_id, "twice", idempotency_key="key-2")
    assert retry.message_id == first.message_id
    assert retry.channel_seq == first.channel_seq == 1
    assert other.channel_seq == 2
    assert await history_bodies(frank, channel.channel_id, expect=2) == ["once", "twice"]
    await frank.close()


def test_cli_user_flow(platform: RunningPlatform) -> None:
    """What a person types in two terminals, minus the typing."""
    alice, bob = unique("cli-alice"), unique("cli-bob")
    typed_password = PASSWORD + "\n"
    for user in (alice, bob):
        assert "registered" in platform.cli("register", user, stdin=typed_password).stdout
        assert "logged in" in platform.cli("login", user, stdin=typed_password).stdout
    created = platform.cli("--as", alice, "create-channel", "cli-room").stdout
    channel_id = created.strip().rsplit(" ", 1)[-1]
    assert "joined #cli-room" in platform.cli("--as", bob, "join", channel_id).stdout
    assert "sent #1" in platform.cli("--as", alice, "send", "cli-room", "hi from the CLI").stdout
    wait_until(
        lambda: "hi from the CLI" in platform.cli("--as", bob, "history", "cli-room").stdout,
        timeout=20,
        what="the message in bob's history",
    )
    assert f"{alice}: hi from the CLI" in platform.cli("--as", bob, "history", "cli-room").stdout
    refused = platform.cli("--as", bob, "send", "cli-room", "   ", check=False)
    assert refused.returncode == 1
    assert "INVALID_ARGUMENT" in refused.stderr


async def test_poison_event_is_parked_and_listed_for_the_operator(platform: RunningPlatform) -> None:
    nc = await platform.nats(name="poisoner", allow_reconnect=False)
    ack = await nc.jetstream().publish("parley.msg.poison.1", b"\xff this is not an event envelope")
    # An auth event on messaging's stream: a security finding of every consumer of MSG.
    forged = NewEvent(aggregate_type="user", aggregate_id="u1", payload=UserRegistered(user_id="u1"), actor="forger")
    sealed = seal(forged, aggregate_version=1, producer="forger@0", trace_context={})
    foreign = await nc.jetstream().publish("parley.msg.channel.forged", sealed.SerializeToString())
    await nc.close()
    wait_until(
        lambda: f"MSG:{ack.seq} parley.msg.poison.1" in platform.cli("parked").stdout,
        timeout=30,
        what="the poison event to be parked by storage's archive consumer",
    )
    assert "undecodable envelope" in platform.cli("parked").stdout
    wait_until(
        lambda: platform.cli("parked").stdout.count(f"MSG:{foreign.seq} parley.msg.channel.forged") == 3,
        timeout=30,
        what="the foreign event parked by storage and messaging (the consumers of all of MSG) and by the "
        "gateway's channel feed (its one consumer of every channel's events)",
    )
    listed = [line for line in platform.cli("parked").stdout.splitlines() if f"MSG:{foreign.seq} " in line]
    assert all("SECURITY" in line and "parley.auth.v1.UserRegistered" in line for line in listed)


async def test_history_right_after_joining_sees_the_join_and_earlier_messages(platform: RunningPlatform) -> None:
    """History waits for the archive to reach the channel's newest event (read-your-writes)."""
    owner = await platform.new_user(unique("owner"))
    channel = await owner.create_channel("join-then-read")
    await owner.send(channel.channel_id, "before you came")
    for _ in range(10):
        member = await platform.new_user(unique("joiner"))
        await member.join_channel(channel.channel_id)
        page = await member.history(channel.channel_id)
        assert [m.body for m in page.messages] == ["before you came"]
        await member.close()
    await owner.close()

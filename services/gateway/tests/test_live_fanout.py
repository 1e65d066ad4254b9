"""Live streams fan out inside the gateway: more streams than nats-server allows consumers, per-user
caps that leave everyone else served, and a hidden history that stays hidden on the live path.

Every service runs in-process (the `stack` composition) on a real TLS nats-server; clients are real
gRPC channels to the gateway.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from parley.auth.v1 import auth_pb2
from parley.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from parley.messaging.v1 import messaging_pb2

from parley_core.pki import Pki
from parley_testing.nats import NatsTestServer
from parley_testing.stack import TIMEOUT_S, Stack, bearer, start_stack, stop_stack
from parley_testing.waiting import until

# nats-server refuses the 1,001st consumer of an account ("maximum consumers limit reached"):
# one consumer per live stream ran into it with 1,000 streams.
NATS_CONSUMER_LIMIT = 1000
CROWD_USERS = 3
STREAMS_PER_USER = 350  # 3 x 350 streams: more than the consumer limit
CHANNELS_PER_STREAM = 4
CONNECTIONS_PER_USER = 4  # streams are multiplexed over a few HTTP/2 connections, as clients do


@pytest_asyncio.fixture
async def roomy(
    monkeypatch: pytest.MonkeyPatch, nats_server: NatsTestServer, pki: Pki, tmp_path: Path
) -> AsyncIterator[Stack]:
    """Every service; the gateway's stream cap high enough to open a crowd, its call budgets out of the way."""
    monkeypatch.setenv("PARLEY_GATEWAY_LIVE_STREAMS_PER_USER", str(STREAMS_PER_USER))
    monkeypatch.setenv("PARLEY_GATEWAY_LIVE_CHANNELS_PER_STREAM", str(CHANNELS_PER_STREAM))
    for budget in ("USER_RATE", "USER_BURST", "SOURCE_RATE", "SOURCE_BURST"):
        monkeypatch.setenv(f"PARLEY_GATEWAY_{budget}", "100000")
    started, running = await start_stack(nats_server, pki, tmp_path, registration="open")
    try:
        yield started
    finally:
        await stop_stack(started, running)


class Member:
    """One user with a few connections to the gateway and their token."""

    def __init__(self, stack: Stack, name: str, token: str, user_id: str) -> None:
        self.name = name
        self.md = bearer(token)
        self.user_id = user_id
        self.stubs = [stack.gateway() for _ in range(CONNECTIONS_PER_USER)]

    @property
    def stub(self) -> gateway_pb2_grpc.GatewayAsyncStub:
        return self.stubs[0]

    async def channel(self, name: str, **options: bool) -> str:
        request = messaging_pb2.CreateChannelRequest(name=name, **options)
        return (await self.stub.CreateChannel(request, metadata=self.md, timeout=TIMEOUT_S)).channel_id

    async def send(self, channel_id: str, body: str) -> messaging_pb2.ChatMessage:
        request = messaging_pb2.PostMessageRequest(channel_id=channel_id, body=body, idempotency_key=uuid.uuid4().hex)
        return await self.stub.SendMessage(request, metadata=self.md, timeout=TIMEOUT_S)

    def subscribe(
        self, channel_ids: list[str], n: int = 0, resume: dict[str, int] | None = None
    ) -> grpc.aio.UnaryStreamCall[gateway_pb2.SubscribeRequest, gateway_pb2.ClientEvent]:
        request = gateway_pb2.SubscribeRequest(
            channel_ids=channel_ids,
            resume=[gateway_pb2.ResumeFrom(channel_id=c, after_position=p) for c, p in (resume or {}).items()],
        )
        return self.stubs[n % len(self.stubs)].Subscribe(request, metadata=self.md)


async def member(stack: Stack, prefix: str) -> Member:
    name = f"{prefix}{uuid.uuid4().hex[:6]}"
    gateway = stack.gateway()
    registered = await gateway.Register(
        auth_pb2.RegisterRequest(username=name, password="a-long-enough-passphrase"), timeout=TIMEOUT_S
    )
    login = await stack.login(name, "a-long-enough-passphrase")
    return Member(stack, name, login.access_token, registered.user_id)


async def ready(stream: grpc.aio.UnaryStreamCall[gateway_pb2.SubscribeRequest, gateway_pb2.ClientEvent]) -> None:
    first = await asyncio.wait_for(stream.read(), TIMEOUT_S)
    assert isinstance(first, gateway_pb2.ClientEvent)
    assert first.HasField("ready"), first


async def refusal(
    stream: grpc.aio.UnaryStreamCall[gateway_pb2.SubscribeRequest, gateway_pb2.ClientEvent],
) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await asyncio.wait_for(stream.read(), TIMEOUT_S)
    return refused.value


async def consumers_on_msg(nats_server: NatsTestServer) -> int:
    nc = await nats_server.connect("platform")
    return (await nc.jetstream().stream_info("MSG")).state.consumer_count


async def test_more_streams_than_nats_allows_consumers_each_get_their_message(
    roomy: Stack, nats_server: NatsTestServer
) -> None:
    """Before the fan-out, stream 1,001 failed with INTERNAL for everyone; now one user at his cap
    is refused alone, and every stream, his and everyone else's, gets its channel's messages."""
    consumers_before = await consumers_on_msg(nats_server)
    crowd = [await member(roomy, "crowd") for _ in range(CROWD_USERS)]
    channels = {m.name: [await m.channel(f"{m.name}-{i}") for i in range(CHANNELS_PER_STREAM)] for m in crowd}

    streams = []
    for m in crowd:
        opened = [m.subscribe(channels[m.name], n) for n in range(STREAMS_PER_USER)]
        await asyncio.gather(*(ready(s) for s in opened))
        streams.extend((m, s) for s in opened)
    assert len(streams) > NATS_CONSUMER_LIMIT

    # One stream more and he is over his own cap: refused, with the cap in the message.
    capped = crowd[0]
    over = await refusal(capped.subscribe(channels[capped.name]))
    assert over.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"at most {STREAMS_PER_USER} live streams per user" in (over.details() or "")
    # Too many channels in one stream: refused too, and it does not count against the streams.
    wide = await member(roomy, "wide")
    many = [await wide.channel(f"wide-{i}") for i in range(CHANNELS_PER_STREAM + 1)]
    too_wide = await refusal(wide.subscribe(many))
    assert too_wide.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"at most {CHANNELS_PER_STREAM} channels per live stream" in (too_wide.details() or "")

    # Everyone else still subscribes, and the gateway holds no consumer per stream.
    bystander = await member(roomy, "bob")
    own = await bystander.channel("bob's")
    bob_stream = bystander.subscribe([own])
    await ready(bob_stream)
    assert await consumers_on_msg(nats_server) <= consumers_before + 1

    await bystander.send(own, "to bob")
    for m in crowd:
        for channel_id in channels[m.name]:
            await m.send(channel_id, f"to {channel_id}")
    bob_event = await asyncio.wait_for(bob_stream.read(), TIMEOUT_S)
    assert bob_event.message.body == "to bob"

    async def every_message(
        stream: grpc.aio.UnaryStreamCall[gateway_pb2.SubscribeRequest, gateway_pb2.ClientEvent],
    ) -> set[str]:
        bodies = set()
        while len(bodies) < CHANNELS_PER_STREAM:
            event = await asyncio.wait_for(stream.read(), TIMEOUT_S)
            bodies.add(event.message.body)
        return bodies

    received = await asyncio.gather(*(every_message(s) for _, s in streams))
    for (m, _), bodies in zip(streams, received, strict=True):
        assert bodies == {f"to {c}" for c in channels[m.name]}

    # Streams the clients close leave the gateway, and their slots come back.
    gateway = roomy.app("gateway")
    assert gateway.live_streams == len(streams) + 1
    for _, stream in streams:
        stream.cancel()
    bob_stream.cancel()
    await until(lambda: gateway.live_streams == 0, "the closed streams to leave the gateway", TIMEOUT_S)
    again = capped.subscribe(channels[capped.name])
    await ready(again)
    again.cancel()


async def events_until(
    stream: grpc.aio.UnaryStreamCall[gateway_pb2.SubscribeRequest, gateway_pb2.ClientEvent], last_body: str
) -> list[tuple[str, int, str]]:
    """(kind, channel_seq or 0, body or change) of each event up to the message `last_body`."""
    seen: list[tuple[str, int, str]] = []
    while True:
        event = await asyncio.wait_for(stream.read(), TIMEOUT_S)
        assert isinstance(event, gateway_pb2.ClientEvent)
        kind = event.WhichOneof("event") or ""
        if kind == "ready":
            continue
        if kind in ("message", "updated"):
            item = getattr(event, kind)
            seen.append((kind, item.channel_seq, "(redacted)" if item.redacted else item.body))
        elif kind == "reaction":
            seen.append((kind, event.reaction.channel_seq, event.reaction.emoji))
        elif kind == "membership":
            seen.append((kind, 0, f"{event.membership.change} {event.membership.detail}".strip()))
        else:
            seen.append((kind, 0, ""))
        if kind == "message" and event.message.body == last_body:
            return seen


async def test_a_hidden_history_stays_hidden_live_and_on_resume(roomy: Stack) -> None:
    owner, carol, newcomer = [await member(roomy, n) for n in ("owner", "carol", "late")]
    cid = await owner.channel("staff", hide_history_before_join=True)
    first = await owner.send(cid, "the door code is 4711")
    second = await owner.send(cid, "and the alarm code 0815")
    await carol.stub.JoinChannel(messaging_pb2.JoinChannelRequest(channel_id=cid), metadata=carol.md, timeout=TIMEOUT_S)
    kick = messaging_pb2.MemberActionRequest(channel_id=cid, user_id=carol.user_id, reason="told the codes around")
    await owner.stub.KickMember(kick, metadata=owner.md, timeout=TIMEOUT_S)
    joined = await newcomer.stub.JoinChannel(
        messaging_pb2.JoinChannelRequest(channel_id=cid), metadata=newcomer.md, timeout=TIMEOUT_S
    )
    assert joined.visible_from_seq == 3
    assert joined.visible_from_position > 0

    # From position 0 (the start of the log) and live only, and the owner, who sees it all.
    # Live only, right after the join: the gateway's feed hands out the join first, so the
    # stream starts after it (read your writes) and never shows the join as news.
    resumed = newcomer.subscribe([cid], resume={cid: 0})
    live = newcomer.subscribe([cid], n=1)
    everything = owner.subscribe([cid], resume={cid: 0})
    for stream in (resumed, live, everything):
        await ready(stream)

    # Changes to the messages from before the join, then a new message and a reaction to it.
    react = messaging_pb2.ReactRequest(channel_id=cid, channel_seq=first.channel_seq, emoji="\N{THUMBS UP SIGN}")
    await owner.stub.React(react, metadata=owner.md, timeout=TIMEOUT_S)
    edit = messaging_pb2.EditMessageRequest(channel_id=cid, channel_seq=first.channel_seq, body="code changed to 1234")
    await owner.stub.EditMessage(edit, metadata=owner.md, timeout=TIMEOUT_S)
    redact = messaging_pb2.RedactMessageRequest(channel_id=cid, channel_seq=second.channel_seq, reason="oops")
    await owner.stub.RedactMessage(redact, metadata=owner.md, timeout=TIMEOUT_S)
    mark = messaging_pb2.MarkReadRequest(channel_id=cid, channel_seq=second.channel_seq)
    await owner.stub.MarkRead(mark, metadata=owner.md, timeout=TIMEOUT_S)
    await owner.send(cid, "welcome")

    after_join = [("message", 3, "welcome")]
    assert await events_until(live, "welcome") == after_join
    assert await events_until(resumed, "welcome") == [("membership", 0, "joined"), *after_join]
    assert await events_until(everything, "welcome") == [
        ("message", 1, "the door code is 4711"),
        ("message", 2, "and the alarm code 0815"),
        ("membership", 0, "joined"),
        ("membership", 0, "kicked told the codes around"),
        ("membership", 0, "joined"),
        ("reaction", 1, "\N{THUMBS UP SIGN}"),
        ("updated", 1, "code changed to 1234"),
        ("updated", 2, "(redacted)"),
        ("read_marker", 0, ""),
        ("message", 3, "welcome"),
    ]
    for stream in (resumed, live, everything):
        stream.cancel()


async def test_a_resume_during_sends_joins_the_live_feed_with_no_gap_and_no_duplicate(roomy: Stack) -> None:
    """The backlog (several batches) is read while sends go on: what the log holds up to the
    feed's position comes from the log, the rest from the feed, each message once, in order."""
    alice, bob = await member(roomy, "alice"), await member(roomy, "bob")
    cid = await alice.channel("busy")
    await bob.stub.JoinChannel(messaging_pb2.JoinChannelRequest(channel_id=cid), metadata=bob.md, timeout=TIMEOUT_S)
    total = 400
    for n in range(1, 251):
        await alice.send(cid, f"m{n}")

    async def keep_sending() -> None:
        for n in range(251, total + 1):
            await alice.send(cid, f"m{n}")

    sender = asyncio.create_task(keep_sending())
    stream = bob.subscribe([cid], resume={cid: 0})
    await ready(stream)
    seen: list[int] = []
    while len(seen) < total:
        event = await asyncio.wait_for(stream.read(), TIMEOUT_S)
        if event.WhichOneof("event") == "message":
            seen.append(event.message.channel_seq)
    await sender
    assert seen == list(range(1, total + 1))
    stream.cancel()


async def test_a_stream_hears_of_its_user_arriving_elsewhere_and_of_their_removal_before_it_ends(
    roomy: Stack,
) -> None:
    owner, dana, carol = [await member(roomy, n) for n in ("owner", "dana", "carol")]
    home = await dana.channel("home")
    stream = dana.subscribe([home])
    await ready(stream)

    club = await owner.channel("club", private=True)
    for user_id in (dana.user_id, carol.user_id):  # carol's invitation is no business of dana's stream
        invite = messaging_pb2.MemberActionRequest(channel_id=club, user_id=user_id)
        await owner.stub.InviteMember(invite, metadata=owner.md, timeout=TIMEOUT_S)
    await dana.stub.JoinChannel(messaging_pb2.JoinChannelRequest(channel_id=club), metadata=dana.md, timeout=TIMEOUT_S)
    direct = await owner.stub.CreateDirectChannel(
        messaging_pb2.CreateDirectChannelRequest(user_ids=[dana.user_id], idempotency_key=uuid.uuid4().hex),
        metadata=owner.md,
        timeout=TIMEOUT_S,
    )
    await dana.send(home, "still home")
    told: list[tuple[str, str, str, str]] = []
    while True:
        event = await asyncio.wait_for(stream.read(), TIMEOUT_S)
        assert isinstance(event, gateway_pb2.ClientEvent)
        if event.HasField("message"):
            break
        m = event.membership
        told.append((m.channel_id, m.change, m.user_id, m.actor_id))
    assert told == [
        (club, "invited", dana.user_id, owner.user_id),
        (club, "joined", dana.user_id, dana.user_id),
        (direct.channel_id, "joined", dana.user_id, owner.user_id),
    ]
    stream.cancel()

    # A stream that covers the channel: the member is told of their removal, then it ends.
    covering = dana.subscribe([club])
    await ready(covering)
    kick = messaging_pb2.MemberActionRequest(channel_id=club, user_id=dana.user_id, reason="done")
    await owner.stub.KickMember(kick, metadata=owner.md, timeout=TIMEOUT_S)
    last = await asyncio.wait_for(covering.read(), TIMEOUT_S)
    assert isinstance(last, gateway_pb2.ClientEvent)
    assert (last.membership.change, last.membership.user_id, last.membership.detail) == ("kicked", dana.user_id, "done")
    assert (await refusal(covering)).code() == grpc.StatusCode.PERMISSION_DENIED

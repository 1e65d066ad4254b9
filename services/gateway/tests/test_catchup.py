"""The resume backlog read in batched direct gets, against a real nats-server with Parley's users."""

from __future__ import annotations

from parley.messaging.v1.events_pb2 import MessagePosted

from parley_core.bus import EventBus
from parley_core.envelope import NewEvent, open_payload
from parley_core.topology import STREAMS_BY_NAME, channel_subject
from parley_gateway import catchup
from parley_gateway.catchup import events_between
from parley_testing.nats import NatsTestServer


async def test_reads_one_channel_between_two_positions_over_several_batches(nats_server: NatsTestServer) -> None:
    bus = EventBus(await nats_server.connect("messaging"), service="messaging", producer="messaging@test")
    await bus.ensure_streams([STREAMS_BY_NAME["MSG"]])
    positions: dict[str, list[int]] = {"a": [], "b": []}
    for n in range(1, 4 * catchup.BATCH_EVENTS + 1):
        channel = "a" if n % 3 else "b"  # two of every three events on channel a
        event = NewEvent(
            "channel", channel, MessagePosted(channel_id=channel, channel_seq=n, body=f"m{n}"), actor="alice"
        )
        appended = await bus.append(
            channel_subject(channel), event, aggregate_version=n, expected_last_subject_seq=None
        )
        positions[channel].append(appended.stream_seq)

    gateway = await nats_server.connect("gateway")  # with the gateway's own permissions
    a = positions["a"]
    after, up_to = a[4], a[-6]

    async def read(after: int, up_to: int) -> list[tuple[int, int]]:
        return [
            (position, open_payload(envelope).channel_seq)  # type: ignore[attr-defined]
            async for position, envelope in events_between(
                gateway, stream="MSG", subject=channel_subject("a"), after=after, up_to=up_to
            )
        ]

    got = await read(after, up_to)
    assert [p for p, _ in got] == [p for p in a if after < p <= up_to]
    assert len(got) > 2 * catchup.BATCH_EVENTS  # read in several batches
    assert await read(a[-1], a[-1] + 1000) == []  # nothing after the end of the log
    assert await read(0, 0) == []
    assert [p for p, _ in await read(0, a[0])] == [a[0]]

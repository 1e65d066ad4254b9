"""`python -m parley_bench.reseed`: re-seeding a restored event log against the plain way, in one run.

Re-seeding (parley_storage.reseed) puts a page of archived events in flight at once, each
publish expecting the sequence before it. The baseline publishes the same events one at a time,
each waiting for its acknowledgement, on the same nats-server in the same process. The figure
is the ratio of the two rates (the machine is shared, so only a ratio from one run means much);
each side runs twice, alternating, and the better run of each counts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from google.protobuf.timestamp_pb2 import Timestamp
from nats.js import JetStreamContext
from parley.messaging.v1.events_pb2 import MessagePosted

from parley_core.actor import Actor
from parley_core.bus import EventBus, ReceivedEvent
from parley_core.envelope import NewEvent, seal
from parley_core.pki import ensure_pki
from parley_core.topology import NATS_IDENTITY, PLATFORM_USER, SERVICES, STREAMS, channel_subject
from parley_storage.archive import SqlEventArchive, open_engine
from parley_storage.datakeys import DataKeys
from parley_storage.kek import FileKeyring
from parley_storage.migrate import upgrade_to_head
from parley_storage.reseed import PAGE, Placed, reseed_stream
from parley_testing.nats import start_nats_test_server

STREAM = "MSG"


def posted(seq: int) -> ReceivedEvent:
    sent = Timestamp()
    sent.GetCurrentTime()
    body = MessagePosted(channel_id="bench", sender_id="u-bench", channel_seq=seq, body=f"message {seq}", sent_at=sent)
    new = NewEvent(aggregate_type="channel", aggregate_id="bench", payload=body, actor=Actor.user("u-bench"))
    envelope = seal(new, aggregate_version=seq, producer="bench@0", trace_context={})
    return ReceivedEvent(envelope, channel_subject("bench"), STREAM, seq, 1, {})


async def filled_archive(folder: Path, events: int) -> SqlEventArchive:
    engine = open_engine(f"sqlite:///{folder / 'archive.db'}")
    upgrade_to_head(engine)
    archive = SqlEventArchive(engine, DataKeys(FileKeyring.load_or_create(folder / "kek.json")))
    for start in range(1, events + 1, PAGE):
        await archive.archive("storage-archive-msg", [posted(s) for s in range(start, min(start + PAGE, events + 1))])
    return archive


async def one_at_a_time(js: JetStreamContext, archive: SqlEventArchive) -> int:
    """The baseline: every archived event published alone, its acknowledgement awaited."""
    after, count = 0, 0
    while True:
        page, has_more = await archive.stream_events(STREAM, after_seq=after, limit=PAGE)
        for event in page:
            placed = Placed.of(event)
            headers = {**placed.headers, "Nats-Expected-Last-Sequence": str(placed.seq - 1)}
            await js.publish(placed.subject, placed.data, headers=headers)
            after, count = event.stream_seq, count + 1
        if not has_more:
            return count


async def timed(js: JetStreamContext, bus: EventBus, run: Callable[[], Awaitable[int]], events: int) -> float:
    """Events per second of one run into an empty stream; it must have put every event back."""
    await js.delete_stream(STREAM)
    await bus.ensure_streams(STREAMS)  # empty again, its sequences from 1
    started = time.perf_counter()
    count = await run()
    elapsed = time.perf_counter() - started
    last = (await js.stream_info(STREAM)).state.last_seq
    if count != events or last != events:
        raise RuntimeError(f"{count} events put back, the stream ends at {last}: expected {events}")
    return events / elapsed


async def _reseed(js: JetStreamContext, archive: SqlEventArchive) -> int:
    return (await reseed_stream(js, archive, STREAM)).events


async def measure(events: int, workdir: Path) -> dict[str, float]:
    pki = ensure_pki(workdir / "pki", [*SERVICES, NATS_IDENTITY, PLATFORM_USER])
    server = await start_nats_test_server(pki, workdir / "nats")
    archive = await filled_archive(workdir, events)
    try:
        nc = await server.connect(PLATFORM_USER)
        bus = EventBus(nc, service=PLATFORM_USER, producer="bench")
        await bus.ensure_streams(STREAMS)
        js = nc.jetstream()
        rates: dict[str, list[float]] = {"reseed": [], "baseline": []}
        for _ in range(2):
            rates["reseed"].append(await timed(js, bus, lambda: _reseed(js, archive), events))
            rates["baseline"].append(await timed(js, bus, lambda: one_at_a_time(js, archive), events))
        best = {name: max(values) for name, values in rates.items()}
        return {
            "events": events,
            "reseed_events_per_s": round(best["reseed"]),
            "baseline_events_per_s": round(best["baseline"]),
            "ratio": round(best["reseed"] / best["baseline"], 2),
        }
    finally:
        archive.engine.dispose()
        await server.close_clients()
        await server.process.stop()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m parley_bench.reseed")
    parser.add_argument("--events", type=int, default=20_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="parley-bench-reseed-") as workdir:
        print(json.dumps(asyncio.run(measure(args.events, Path(workdir))), indent=1))


if __name__ == "__main__":
    main()

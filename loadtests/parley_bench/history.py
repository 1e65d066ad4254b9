"""A history page's cost against the channel's size (issue 15): the same page read from a channel
of 100 messages and from one of 100,000 messages with 10,000 reactions.

Both channels are filled through the archive's own API (SqlEventArchive.archive, sealed events
as the durable consumer hands them), not through the platform: sending 100,000 messages through
gateway and messaging would take most of an hour on two cores and measure the write path again.
The reads are storage's own history query (channel_history, what GetChannelHistory serves),
alternating between the channels so both see the same machine; only their ratio means much.

`python -m parley_bench.history [--quick]`; `make bench` runs it as its `history` section."""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from parley.messaging.v1.events_pb2 import ChannelCreated, MemberJoined, ReactionAdded

from parley_bench.stats import percentile, ratio
from parley_core.actor import Actor
from parley_core.bus import ReceivedEvent
from parley_core.envelope import NewEvent, seal
from parley_core.topology import channel_subject
from parley_storage.archive import SqlEventArchive, open_engine
from parley_storage.datakeys import DataKeys
from parley_storage.kek import FileKeyring
from parley_storage.migrate import upgrade_to_head
from parley_testing.events import message_posted

CONSUMER = "storage-archive-msg"
BATCH = 1_000
PAGE = 50
USERS = 20
WARM_UP = 20


@dataclass(frozen=True)
class HistoryPlan:
    small: int  # messages in the small channel
    large: int  # messages in the large one
    reactions: int  # reactions in the large one
    reads: int  # pages read from each

    @classmethod
    def of(cls, *, quick: bool) -> HistoryPlan:
        if quick:
            return cls(small=100, large=5_000, reactions=500, reads=300)
        return cls(small=100, large=100_000, reactions=10_000, reads=1_000)


class _Log:
    """The MSG stream as JetStream numbers it."""

    def __init__(self) -> None:
        self.seq = 0

    def event(self, channel_id: str, payload: Message, actor: str) -> ReceivedEvent:
        self.seq += 1
        new = NewEvent(aggregate_type="channel", aggregate_id=channel_id, payload=payload, actor=Actor.user(actor))
        envelope = seal(new, aggregate_version=self.seq, producer="bench@0", trace_context={})
        return ReceivedEvent(envelope, channel_subject(channel_id), "MSG", self.seq, 1, {})


def _channel(log: _Log, channel_id: str, messages: int, reactions: int) -> Iterator[ReceivedEvent]:
    """A channel with every user a member, `messages` posts and `reactions` spread evenly over them."""
    users = [f"user-{n}" for n in range(USERS)]
    yield log.event(channel_id, ChannelCreated(channel_id=channel_id, name=channel_id, creator_id=users[0]), users[0])
    for user in users[1:]:
        yield log.event(channel_id, MemberJoined(channel_id=channel_id, user_id=user), user)
    every = max(1, messages // reactions) if reactions else 0
    first_sent_ns = time.time_ns() - messages * 1_000_000_000
    for n in range(1, messages + 1):
        sender = users[n % USERS]
        sent = Timestamp()
        sent.FromNanoseconds(first_sent_ns + n * 1_000_000_000)  # a message a second
        post = message_posted(
            channel_id, n, sender, f"message {n} of {channel_id}, about as long as a chat line is", sent_at=sent
        )
        yield log.event(channel_id, post, sender)
        if every and n % every == 0 and n // every <= reactions:
            reactor = users[(n + 1) % USERS]
            reaction = ReactionAdded(channel_id=channel_id, channel_seq=n, user_id=reactor, emoji="+1")
            yield log.event(channel_id, reaction, reactor)


async def filled_archive(folder: Path, plan: HistoryPlan) -> SqlEventArchive:
    engine = open_engine(f"sqlite:///{folder / 'archive.db'}")
    upgrade_to_head(engine)
    archive = SqlEventArchive(engine, DataKeys(FileKeyring.load_or_create(folder / "kek.json")))
    log = _Log()
    batch: list[ReceivedEvent] = []
    for channel_id, messages, reactions in (("small", plan.small, 0), ("large", plan.large, plan.reactions)):
        for item in _channel(log, channel_id, messages, reactions):
            batch.append(item)
            if len(batch) == BATCH:
                await archive.archive(CONSUMER, batch)
                batch = []
    await archive.archive(CONSUMER, batch)
    return archive


async def _read(archive: SqlEventArchive, channel_id: str, messages: int, rng: random.Random) -> float:
    """One page: the newest (what a client opens first) every other read, else one at random."""
    started = time.perf_counter()
    if rng.random() < 0.5:
        page, _ = await archive.channel_history(channel_id, after_seq=0, before_seq=messages + 1, limit=PAGE)
    else:
        after = rng.randrange(0, max(1, messages - PAGE))
        page, _ = await archive.channel_history(channel_id, after_seq=after, limit=PAGE)
    elapsed = time.perf_counter() - started
    assert len(page) == min(PAGE, messages), (channel_id, len(page))
    return elapsed


async def measure_history(workdir: Path, *, quick: bool) -> dict[str, Any]:
    plan = HistoryPlan.of(quick=quick)
    folder = workdir / "history"
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    archive = await filled_archive(folder, plan)
    fill_s = time.perf_counter() - started
    try:
        rng = random.Random(15)  # noqa: S311 - which pages are read, not a secret
        for _ in range(WARM_UP):  # the first reads fill SQLite's page cache and the data-key cache
            await _read(archive, "small", plan.small, rng)
            await _read(archive, "large", plan.large, rng)
        times: dict[str, list[float]] = {"small": [], "large": []}
        for _ in range(plan.reads):
            times["small"].append(await _read(archive, "small", plan.small, rng))
            times["large"].append(await _read(archive, "large", plan.large, rng))
    finally:
        archive.engine.dispose()
    small_p99, large_p99 = percentile(times["small"], 0.99), percentile(times["large"], 0.99)
    return {
        "page_messages": PAGE,
        "small_channel_messages": plan.small,
        "large_channel_messages": plan.large,
        "large_channel_reactions": plan.reactions,
        "reads_per_channel": plan.reads,
        "fill_seconds": round(fill_s, 1),
        "small_page_p50_ms": round(percentile(times["small"], 0.5) * 1000, 2),
        "small_page_p99_ms": round(small_p99 * 1000, 2),
        "large_page_p50_ms": round(percentile(times["large"], 0.5) * 1000, 2),
        "large_page_p99_ms": round(large_p99 * 1000, 2),
        "p99_large_over_small": round(ratio(large_p99, small_p99), 2),
    }


def history_goals(history: dict[str, Any]) -> list[tuple[str, float, str, float]]:
    return [
        (
            f"history page p99, {history['large_channel_messages']:,} messages / {history['small_channel_messages']}"
            " <= 2",
            history["p99_large_over_small"],
            "<=",
            2.0,
        )
    ]


def main() -> int:
    parser = argparse.ArgumentParser(prog="parley_bench.history", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a 5,000-message channel instead of 100,000")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="parley-history-") as workdir:
        print(json.dumps(asyncio.run(measure_history(Path(workdir), quick=args.quick)), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

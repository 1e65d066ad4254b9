"""A chat workload that keeps sending through faults and keeps the books on what happened.

Clients behave as a careful application does: a send that fails for a transient reason
(UNAVAILABLE, DEADLINE_EXCEEDED, ...) is retried with the same idempotency key until it is
acknowledged, and a live stream that breaks is opened again, resuming after the position of the
last event it read. The ledger then answers the only questions that matter: was every
acknowledged message archived exactly once, and did it reach every member's live stream exactly
once, across the reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import grpc
from parley.messaging.v1.messaging_pb2 import ChatMessage

from parley_client import LiveStream, ParleyClient, ParleyError
from parley_testing.waiting import eventually, until

PASSWORD = "fault-test-passphrase"
TRANSIENT = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
SEND_GIVE_UP_S = 120.0
READY_TIMEOUT_S = 30.0  # a client gives up on a stream that never says `ready`
T = TypeVar("T")


async def retrying(call: Callable[[], Awaitable[T]], *, give_up_s: float = SEND_GIVE_UP_S) -> T:
    """Retry a transient failure with backoff, as a client app rides out a restart."""
    deadline = time.monotonic() + give_up_s
    delay = 0.05
    while True:
        try:
            return await call()
        except ParleyError as exc:
            if exc.code not in TRANSIENT or time.monotonic() > deadline:
                raise
        await asyncio.sleep(delay)  # client backoff between retries, not a test wait
        delay = min(delay * 2, 1.0)


@dataclass
class Member:
    name: str
    client: ParleyClient
    delivered: list[str] = field(default_factory=list)  # message ids as they arrived live
    stream_opens: int = 0
    stream_breaks: int = 0
    opened_at: list[float] = field(default_factory=list)  # monotonic time of each `ready`
    delivered_since_open: int = 0
    positions: dict[str, int] = field(default_factory=dict)  # last position read, to resume from


@dataclass
class Ledger:
    attempted: dict[str, str] = field(default_factory=dict)  # idempotency key -> body
    acknowledged: dict[str, str] = field(default_factory=dict)  # idempotency key -> message id
    retries: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    sends: list[tuple[float, float]] = field(default_factory=list)  # (began, acknowledged), monotonic

    def resumed_after(self, fault_at: float) -> float | None:
        """Seconds from a fault until the first acknowledgement of a send begun after it."""
        acks = [acked for began, acked in self.sends if began >= fault_at]
        return min(acks) - fault_at if acks else None


class ChatWorkload:
    """Members of one channel who send and listen until told to stop."""

    def __init__(self, address: str, ca_cert: bytes, *, members: int = 3) -> None:
        self.address = address
        self.ca_cert = ca_cert
        self.member_count = members
        self.members: list[Member] = []
        self.channel_id = ""
        self.ledger = Ledger()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False

    def connect(self) -> ParleyClient:
        return ParleyClient.connect(self.address, ca_cert=self.ca_cert)

    async def set_up(self) -> None:
        for i in range(self.member_count):
            name = f"fault{i}-{uuid.uuid4().hex[:8]}"
            client = self.connect()
            await client.register(name, PASSWORD)
            await client.login(name, PASSWORD)
            self.members.append(Member(name, client))
        self.channel_id = (await self.members[0].client.create_channel("faults")).channel_id
        for member in self.members[1:]:
            await member.client.join_channel(self.channel_id)

    async def start(self, *, senders_per_member: int = 1, pause_s: float = 0.02, send_once: bool = False) -> None:
        """`send_once`: each message is one call of `send()` without a key of ours, as an app that
        leaves retrying to the SDK does; any error it raises counts as refused (the audit fails)."""
        for member in self.members:
            self._tasks.append(asyncio.create_task(self._listen(member)))
        await until(lambda: all(m.stream_opens for m in self.members), timeout=60, what="every member's live stream")
        for member in self.members:
            for n in range(senders_per_member):
                self._tasks.append(asyncio.create_task(self._send_loop(member, n, pause_s, send_once=send_once)))

    async def stop_sending(self) -> None:
        """Stop the senders (each finishes its send in flight); live streams stay open."""
        self._stop.set()
        await asyncio.gather(*self._tasks[self.member_count :])

    async def close(self) -> None:
        """Stop everything and close every client; safe to call again (test teardown does)."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for member in self.members:
            await member.client.close()

    async def _send_loop(self, member: Member, lane: int, pause_s: float, *, send_once: bool) -> None:
        n = 0
        while not self._stop.is_set():
            label = f"{member.name}-{lane}-{n}"  # a retried send's idempotency key too
            body = f"{member.name} lane {lane} #{n}"
            self.ledger.attempted[label] = body
            began = time.monotonic()
            try:
                if send_once:
                    sent = await member.client.send(self.channel_id, body)
                else:
                    sent = await self._send_retrying(member, label, body)
            except ParleyError as exc:
                # A refusal of a single send fails the audit: keep why, for the report.
                self.ledger.refused[f"{exc.code.name}: {exc.message}"[:200] if send_once else exc.code.name] += 1
            else:
                self.ledger.acknowledged[label] = sent.message_id
                self.ledger.sends.append((began, time.monotonic()))
            n += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), pause_s)  # paces the sender

    async def _send_retrying(self, member: Member, key: str, body: str) -> ChatMessage:
        """One message under its own key, retried until acknowledged or given up (the key makes it
        count once); the retries go to the ledger."""
        attempts = 0

        async def send() -> ChatMessage:
            nonlocal attempts
            attempts += 1
            return await member.client.send(self.channel_id, body, idempotency_key=key)

        try:
            return await retrying(send)
        finally:
            self.ledger.retries += max(0, attempts - 1)

    async def _listen(self, member: Member) -> None:
        delay = 0.05
        while True:
            # The first open starts at `ready`'s positions; every reopen resumes after the last
            # event read, so what was published while the stream was broken still arrives live.
            stream: LiveStream = member.client.subscribe([self.channel_id], resume=member.positions or None)
            try:
                await asyncio.wait_for(stream.ready(), READY_TIMEOUT_S)
                member.positions = dict(stream.positions)
                member.stream_opens += 1
                member.opened_at.append(time.monotonic())
                member.delivered_since_open = 0
                delay = 0.05
                async for message in stream:
                    member.delivered.append(message.message_id)
                    member.positions = dict(stream.positions)
                    member.delivered_since_open += 1
            except (ParleyError, StopAsyncIteration, TimeoutError):
                member.stream_breaks += 1
            finally:
                stream.cancel()
            await asyncio.sleep(delay)  # reconnect backoff, as a client app does
            delay = min(delay * 2, 1.0)

    async def wait_acknowledged(self, more: int, *, timeout: float = 120.0) -> None:
        """Let the load run until `more` further sends were acknowledged."""
        target = len(self.ledger.acknowledged) + more
        await until(lambda: len(self.ledger.acknowledged) >= target, timeout=timeout, what=f"{more} more acks")

    async def history(self) -> list[tuple[int, str, str]]:
        """The whole channel history as (channel_seq, message_id, body), paging through it."""
        reader = self.members[0].client
        out: list[tuple[int, str, str]] = []
        after = 0
        while True:
            page = await retrying(lambda after=after: reader.history(self.channel_id, after_seq=after, limit=500))
            out.extend((m.channel_seq, m.message_id, m.body) for m in page.messages)
            if not page.has_more:
                return out
            after = out[-1][0]

    async def live_after_reconnect(self) -> dict[str, int]:
        """Each member sends one marker; how many members' live streams got every marker."""
        baseline = {m.name: len(m.delivered) for m in self.members}
        markers = []
        for member in self.members:
            sent = await retrying(lambda member=member: member.client.send(self.channel_id, f"marker {member.name}"))
            markers.append(sent.message_id)
        wanted = set(markers)
        now = time.monotonic()
        state = ", ".join(
            f"{m.name}: {len(m.delivered)} delivered, opened {m.stream_opens}x, broke {m.stream_breaks}x,"
            f" opens {[round(t - now, 1) for t in m.opened_at]}s ago, {m.delivered_since_open} since"
            for m in self.members
        )
        await until(
            lambda: all(wanted <= set(m.delivered[baseline[m.name] :]) for m in self.members),
            timeout=60,
            what=f"every member's live stream to deliver every marker ({len(self.ledger.acknowledged)} acked; {state})",
        )
        return {m.name: len(wanted & set(m.delivered[baseline[m.name] :])) for m in self.members}


@dataclass
class FaultReport:
    scenario: str
    sent: int
    acknowledged: int
    archived: int
    delivered_live: int
    delivered_live_expected: int
    lost: int
    duplicated: int
    retries: int
    refused: dict[str, int]
    stream_reconnects: int
    delivered_twice: int = 0  # a message that reached one member's live stream more than once
    notes: str = ""
    # Per fault: seconds until the broken part was back, and until sends were acknowledged again.
    recovery: list[dict[str, float | None]] = field(default_factory=list)

    def publish(self) -> None:
        publish_figures(self.scenario, self.__dict__)


def publish_figures(scenario: str, figures: dict[str, object]) -> None:
    """Print a scenario's figures and, under `make faults`, keep them as JSON beside the others."""
    line = json.dumps({"scenario": scenario, **figures})
    print(f"[fault-report] {line}")
    folder = os.environ.get("PARLEY_FAULT_RESULTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / f"{scenario}.json").write_text(line + "\n")


async def audit(
    workload: ChatWorkload,
    scenario: str,
    *,
    notes: str = "",
    recovery: list[dict[str, float | None]] | None = None,
) -> FaultReport:
    """Wait until the archive holds every acknowledged send, then check it holds each once."""
    acked_ids = set(workload.ledger.acknowledged.values())
    history: list[tuple[int, str, str]] = []

    async def archived_all() -> bool | None:
        nonlocal history
        history = await workload.history()
        return True if acked_ids <= {mid for _, mid, _ in history} else None

    # The archive trails the acks by its lag; on a timeout the audit below counts what is missing.
    with contextlib.suppress(TimeoutError):
        await eventually(archived_all, "every acknowledged send archived", 120, interval=0.2)

    # Live streams trail the acks too; each member's resumed stream must catch up on every one.
    with contextlib.suppress(TimeoutError):
        await until(
            lambda: all(acked_ids <= set(m.delivered) for m in workload.members),
            timeout=60,
            what="every acknowledged send on every member's live stream",
        )
    ids = Counter(mid for _, mid, _ in history)
    bodies = Counter(body for _, _, body in history if not body.startswith("marker "))
    seqs = [seq for seq, _, _ in history]
    delivered = sum(len(acked_ids & set(m.delivered)) for m in workload.members)
    delivered_twice = sum(sum(1 for c in Counter(m.delivered).values() if c > 1) for m in workload.members)
    report = FaultReport(
        scenario=scenario,
        sent=len(workload.ledger.attempted),
        acknowledged=len(acked_ids),
        archived=len(history),
        delivered_live=delivered,
        delivered_live_expected=len(acked_ids) * len(workload.members),
        delivered_twice=delivered_twice,
        lost=len(acked_ids - set(ids)),
        duplicated=sum(1 for c in ids.values() if c > 1) + sum(1 for c in bodies.values() if c > 1),
        retries=workload.ledger.retries,
        refused=dict(workload.ledger.refused),
        stream_reconnects=sum(max(0, m.stream_opens - 1) for m in workload.members),
        notes=notes,
        recovery=recovery or [],
    )
    report.publish()
    assert report.lost == 0, f"acknowledged but not archived: {sorted(acked_ids - set(ids))[:10]}"
    assert report.duplicated == 0, f"archived more than once: {[k for k, c in bodies.items() if c > 1][:10]}"
    assert seqs == list(range(1, len(seqs) + 1)), "channel sequence numbers have gaps or repeats"
    missed = {m.name: len(acked_ids - set(m.delivered)) for m in workload.members}
    assert report.delivered_live == report.delivered_live_expected, f"acknowledged, not delivered live: {missed}"
    assert report.delivered_twice == 0, "a resumed live stream repeated a message"
    known = set(workload.ledger.attempted.values())
    phantom = [body for body in bodies if body not in known]
    assert not phantom, f"history holds messages nobody sent: {phantom[:5]}"
    assert not workload.ledger.refused, f"sends refused for good: {workload.ledger.refused}"
    return report

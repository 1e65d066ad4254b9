"""`parley parked`: list the platform's security findings, then the events consumers set aside.

The platform's consumer guard records its findings (kind `consumer-flood`: a service's
credential made consumers it may not keep) on PLATFORM_FINDINGS, a stream only the platform
identity writes, so no flood of parked copies can push them out; they are listed first. A
consumer parks an event it failed on (a poison event) on PARKED, and, as a security finding, any
event whose type its stream's owner never writes (kind `foreign-event`: forged, or published by
the wrong service).

Every service may park on its own subtree (`parley.parked.<service>.>`, its NATS permissions) with
any headers it likes, so each line names who parked it (the subject's service, which nats-server
enforces), and a consumer-flood record is the guard's finding only on PLATFORM_FINDINGS: one a
service parked claiming that kind is shown as what it is (a red team's gateway parked one
blaming messaging).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from parley_cli.state import load_running_state
from parley_cli.terminal import shown
from parley_core.bus import FOREIGN_EVENT
from parley_core.consumer_floods import CONSUMER_FLOOD
from parley_core.nats_connect import connect_as_platform
from parley_core.topology import PLATFORM_FINDINGS, PLATFORM_USER, STREAMS_BY_NAME

# The kinds of parked record that are security findings, and what each says.
SECURITY_KINDS = {
    FOREIGN_EVENT: "not its stream owner's to write",
    CONSUMER_FLOOD: "a service's credential made consumers it may not keep",
}
PARKED = "PARKED"
# The kinds only the platform records, on PLATFORM_FINDINGS (the others: any service's consumer,
# on its own subtree of PARKED).
PLATFORM_KINDS = frozenset({CONSUMER_FLOOD})
BATCH = 1000
FETCH_TIMEOUT_S = 5.0
INACTIVE_AFTER_S = 30.0  # the listing's consumer goes by itself should the CLI die mid-way


@dataclass(frozen=True)
class ParkedEvent:
    seq: int
    subject: str
    original_subject: str
    original_stream: str
    original_seq: str
    consumer: str
    reason: str
    kind: str = ""  # FOREIGN_EVENT for an event its stream's owner never writes
    stream: str = PARKED  # or PLATFORM_FINDINGS, the platform's own

    @property
    def parked_by(self) -> str:
        """Who wrote it, the one thing in it nats-server vouches for: the platform alone writes
        PLATFORM_FINDINGS; on PARKED, the service whose subtree it is on."""
        if self.stream == PLATFORM_FINDINGS:
            return PLATFORM_USER
        parts = self.subject.split(".")
        return parts[2] if len(parts) > 3 and parts[:2] == ["parley", "parked"] else "?"

    @property
    def security_finding(self) -> bool:
        return self.kind in SECURITY_KINDS and (self.kind not in PLATFORM_KINDS or self.stream == PLATFORM_FINDINGS)

    def line(self) -> str:
        """Its headers come from whatever failed (a reason may quote the event): shown escaped."""
        origin = f"{self.original_stream}:{self.original_seq} {self.original_subject}"
        if self.security_finding:
            security = f" SECURITY ({SECURITY_KINDS[self.kind]})"
        elif self.kind in SECURITY_KINDS:  # a kind only the platform records, claimed by a service
            security = (
                f" claims kind {self.kind}, which only {PLATFORM_USER} records (on {PLATFORM_FINDINGS}): NOT a finding"
            )
        else:
            security = ""
        where = f"{PLATFORM_FINDINGS} #{self.seq} found" if self.stream == PLATFORM_FINDINGS else f"#{self.seq} parked"
        return (
            f"{where} by {shown(self.parked_by)}: {shown(origin)} consumer={shown(self.consumer)}"
            f"{security} reason={shown(self.reason)}"
        )


async def list_parked(data_dir: Path) -> AsyncIterator[ParkedEvent]:
    """The platform's findings, then every parked event, oldest first, as they are read: in
    batches through one consumer per stream, so a stream flooded with parked copies (any service
    may park on its own subtree) is listed at the server's pace, not one request per event, and
    the first lines show at once."""
    state = load_running_state(data_dir)
    nc = await connect_as_platform(
        data_dir,
        url=state["nats_url"],
        name="parley-parked",
        allow_reconnect=False,
        max_reconnect_attempts=1,
        connect_timeout=3,
    )
    try:
        js = nc.jetstream()
        for stream in (PLATFORM_FINDINGS, PARKED):
            async for event in _listed(js, stream):
                yield event
    finally:
        await nc.close()


async def _listed(js: JetStreamContext, stream: str) -> AsyncIterator[ParkedEvent]:
    try:
        info = await js.stream_info(stream)
    except nats.js.errors.NotFoundError:
        return  # PLATFORM_FINDINGS on a platform started before it existed: nothing found there yet
    if not info.state.messages:
        return
    last = info.state.last_seq  # what is there now; anything added while listing waits for the next run
    config = ConsumerConfig(
        ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL, inactive_threshold=INACTIVE_AFTER_S
    )
    reader = await js.pull_subscribe(STREAMS_BY_NAME[stream].subjects[0], stream=stream, config=config)
    try:
        while True:
            try:
                batch = await reader.fetch(BATCH, timeout=FETCH_TIMEOUT_S)
            except nats.errors.TimeoutError:
                return  # nothing left (removed by an operator since the count)
            for msg in batch:
                seq = msg.metadata.sequence.stream
                if seq > last:
                    return
                yield _parked(seq, msg.subject, msg.headers or {}, stream)
                if seq == last:
                    return
    finally:
        await reader.unsubscribe()


def _parked(seq: int, subject: str, headers: dict[str, str], stream: str) -> ParkedEvent:
    return ParkedEvent(
        seq=seq,
        subject=subject,
        original_subject=headers.get("Parley-Original-Subject", ""),
        original_stream=headers.get("Parley-Original-Stream", ""),
        original_seq=headers.get("Parley-Original-Sequence", ""),
        consumer=headers.get("Parley-Consumer", ""),
        reason=headers.get("Parley-Parked-Reason", ""),
        kind=headers.get("Parley-Parked-Kind", ""),
        stream=stream,
    )

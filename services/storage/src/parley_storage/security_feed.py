"""The security event stream for the console: auth's audit records (SEC) and the detector's
findings (AnomalyDetected on STORE), read from the archive, the recent ones first and then each
batch as the archive commits it (ArchiveProgress wakes the watchers).

Why the archive and not a NATS subscription per watcher: the archive already holds both streams
decrypted, in order, and exactly once; a watcher costs one indexed read per archived batch and no
consumer on the broker, and the backlog and the live part come from the same place, so nothing
falls between them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

from parley.auth.v1.events_pb2 import SecurityEventRecorded
from parley.storage.v1 import storage_pb2
from parley.storage.v1.events_pb2 import AnomalyDetected

from parley_storage.archive import SqlEventArchive, StoredEvent, actor_forms
from parley_storage.progress import ArchiveProgress

SEC, STORE = "SEC", "STORE"
DEFAULT_BACKLOG = 50
MAX_BACKLOG = 500
# How far back the backlog looks, per stream (STORE also holds storage's other facts).
BACKLOG_SCAN = 2000
PAGE = 500
# A quiet stream still re-checks the caller's token this often, so a revoked one ends it.
RECHECK_S = 15.0
ANOMALY = "anomaly"
CAUGHT_UP = storage_pb2.SecurityEventNotice(caught_up=True)


@dataclass(frozen=True)
class Filter:
    kinds: frozenset[str]
    actor: str

    @classmethod
    def of(cls, request: storage_pb2.WatchSecurityEventsRequest) -> Filter:
        return cls(kinds=frozenset(k.strip() for k in request.kinds if k.strip()), actor=request.actor.strip())

    def admits(self, notice: storage_pb2.SecurityEventNotice) -> bool:
        if self.kinds and not (
            notice.kind in self.kinds or (notice.kind.startswith(f"{ANOMALY}:") and ANOMALY in self.kinds)
        ):
            return False
        if not self.actor:
            return True
        people = set(actor_forms(self.actor))
        return (
            notice.actor in people
            or notice.user_id in people
            or (notice.username != "" and notice.username.casefold() == self.actor.casefold())
        )


def notice_of(event: StoredEvent) -> storage_pb2.SecurityEventNotice | None:
    """An archived audit record or anomaly finding as the console shows it; None for anything else
    (another fact on STORE, a shredded or unreadable row)."""
    payload = event.payload()
    at = event.occurred_at_ns / 1e9
    if isinstance(payload, SecurityEventRecorded):
        return storage_pb2.SecurityEventNotice(
            kind=payload.kind,
            occurred_at=at,
            actor=payload.actor,
            user_id=payload.user_id,
            username=payload.username,
            source=payload.source,
            detail=payload.detail,
            chain_index=payload.chain_index,
            stream=event.stream,
            stream_seq=event.stream_seq,
        )
    if isinstance(payload, AnomalyDetected):
        return storage_pb2.SecurityEventNotice(
            kind=f"{ANOMALY}:{payload.kind}",
            occurred_at=at,
            actor=event.actor,
            user_id=payload.user_id or _person_in(payload.subject),
            source=payload.source,
            detail=f"{payload.why} (response: {payload.response or 'alert'})",
            stream=event.stream,
            stream_seq=event.stream_seq,
        )
    return None


def _person_in(subject: str) -> str:
    """The account a finding is about when its subject names one ("actor:<id>" of a roll-out's
    approver, "user:<id>"), so the console shows who; an address or a service names none."""
    who = subject.partition(":")[2] if subject.startswith(("actor:", "user:")) else ""
    return who if who and ":" not in who and who != "platform" else ""


class SecurityFeed:
    def __init__(self, archive: SqlEventArchive, progress: ArchiveProgress) -> None:
        self._archive = archive
        self._progress = progress

    async def watch(
        self, request: storage_pb2.WatchSecurityEventsRequest, still_allowed: Callable[[], None]
    ) -> AsyncIterator[storage_pb2.SecurityEventNotice]:
        """The backlog, a caught-up marker, then every new matching event (and the marker again
        after each quiet RECHECK_S); `still_allowed` raises once the caller may no longer read."""
        wanted = Filter.of(request)
        backlog = request.backlog or DEFAULT_BACKLOG
        seen = {stream: self._progress.archived(stream) for stream in (SEC, STORE)}
        recent: list[storage_pb2.SecurityEventNotice] = []
        for stream, up_to in seen.items():
            recent.extend(await self._read(stream, max(0, up_to - BACKLOG_SCAN), wanted, up_to=up_to))
        recent.sort(key=lambda n: (n.occurred_at, n.stream, n.stream_seq))
        for notice in recent[-backlog:]:
            yield notice
        yield CAUGHT_UP
        while True:
            moved = await self._progress.wait_past(seen, timeout=RECHECK_S)
            still_allowed()
            if not moved:
                yield CAUGHT_UP  # a sign of life on a quiet stream
                continue
            for stream, after in list(seen.items()):
                up_to = self._progress.archived(stream)
                if up_to <= after:
                    continue
                for notice in await self._read(stream, after, wanted, up_to=up_to):
                    yield notice
                seen[stream] = up_to

    async def _read(
        self, stream: str, after: int, wanted: Filter, *, up_to: int
    ) -> Sequence[storage_pb2.SecurityEventNotice]:
        """Matching events at positions after..up_to (what the progress says is archived)."""
        found: list[storage_pb2.SecurityEventNotice] = []
        while after < up_to:
            page, more = await self._archive.stream_events(stream, after_seq=after, limit=PAGE)
            for event in page:
                if event.stream_seq > up_to:
                    return found
                notice = notice_of(event)
                if notice is not None and wanted.admits(notice):
                    found.append(notice)
            if not page or not more:
                return found
            after = page[-1].stream_seq
        return found

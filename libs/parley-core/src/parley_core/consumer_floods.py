"""A service's credential that made consumers it may not keep (the consumer guard deleted them):
each flood reported once its first findings are gathered (logged with `security_event:
consumer_flood`, announced, recorded on the platform's own PLATFORM_FINDINGS stream, kind
`consumer-flood`), and a credential that keeps at it handed to `quarantine`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import nats.errors
from nats.aio.client import Client

from parley_core.topology import platform_finding_subject

log = logging.getLogger(__name__)

CONSUMER_FLOOD = "consumer-flood"  # Parley-Parked-Kind of the guard's finding (on PLATFORM_FINDINGS)
# A service whose credential made this many consumers it may not keep within the window keeps
# flooding: quarantined. No service's own code makes one.
QUARANTINE_AFTER = 100
QUARANTINE_WINDOW_S = 60.0
# The first finding of a flood is reported this soon (with what it made by then), later ones at most this often.
REPORT_FIRST_S = 1.0
REPORT_EVERY_S = 10.0
# Who made a consumer the guard's sweep found made while it watched, which no advisory named: the
# advisories were lost (a flood of refused 1 MB API calls can make the server cut the guard's
# connection off as a slow consumer), so the finding is recorded without a name and no one is quarantined.
UNATTRIBUTED = "an unnamed credential"


@dataclass(frozen=True)
class Flood:
    """A service's credential made consumers no service may keep (undeclared durables, more than
    its quota, ...): what the guard deleted of them."""

    service: str
    deleted: dict[str, int]  # per stream
    quota: int
    quarantined: bool

    def sentence(self) -> str:
        made = ", ".join(f"{count} on {stream}" for stream, count in sorted(self.deleted.items()))
        if self.service == UNATTRIBUTED:
            return (
                f"consumers no service may keep ({made}) were made while the consumer guard watched, yet no advisory"
                " named their maker (were the guard's advisories lost to a flood of API calls?); the guard deleted them"
            )
        then = "; its account may make no more consumers until an operator lifts the quarantine" * self.quarantined
        return (
            f"{self.service}'s NATS credential made consumers it may not keep ({made}: undeclared durables, "
            f"or more than its quota of {self.quota} per stream); the consumer guard deleted them{then}"
        )


@dataclass
class FloodReports:
    nc: Client
    quota: int
    quarantine_after: int = QUARANTINE_AFTER
    # Told of each finding (`parley up` prints it); and asked to take a flooding service's rights away.
    announce: Callable[[str], None] = lambda _text: None
    quarantine: Callable[[str, str], Awaitable[None]] | None = None
    findings: list[Flood] = field(default_factory=list)
    quarantined: set[str] = field(default_factory=set)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _over: dict[str, Counter[str]] = field(default_factory=dict)  # service -> stream -> deleted, unreported
    _over_times: dict[str, deque[float]] = field(default_factory=dict)
    _last_report: dict[str, float] = field(default_factory=dict)

    def lifted(self, service: str) -> None:
        """An operator lifted the service's quarantine: its flood count starts again."""
        self.quarantined.discard(service)
        self._over_times.pop(service, None)

    def violated(self, service: str, stream: str) -> None:
        """One more consumer `service`'s credential made and may not keep, on `stream`."""
        now = time.monotonic()
        first = service not in self._over
        self._over.setdefault(service, Counter())[stream] += 1
        times = self._over_times.setdefault(service, deque())
        times.append(now)
        while times and times[0] < now - QUARANTINE_WINDOW_S:
            times.popleft()
        if (
            len(times) >= self.quarantine_after
            and service not in self.quarantined
            and service != UNATTRIBUTED
            and self.quarantine is not None
        ):
            self.quarantined.add(service)
            why = f"made {len(times)} consumers it may not keep within {QUARANTINE_WINDOW_S:g} s"
            self.tasks.append(asyncio.create_task(self._quarantine(service, why), name=f"quarantine-{service}"))
        if first:
            wait = max(REPORT_FIRST_S, self._last_report.get(service, -REPORT_EVERY_S) + REPORT_EVERY_S - now)
            self.tasks.append(asyncio.create_task(self._report_after(service, wait), name=f"report-{service}"))

    async def _quarantine(self, service: str, why: str) -> None:
        assert self.quarantine is not None
        try:
            await self.quarantine(service, why)
        except Exception:  # the guard keeps deleting all the same
            log.exception("quarantining a flooding service failed", extra={"service": service})

    async def _report_after(self, service: str, wait: float) -> None:
        await asyncio.sleep(wait)  # a flood's first findings gathered into one report
        deleted = self._over.pop(service, Counter())
        self._last_report[service] = time.monotonic()
        flood = Flood(service, dict(deleted), self.quota, quarantined=service in self.quarantined)
        self.findings.append(flood)
        log.error(
            "security: a service's credential flooded a stream with consumers",
            extra={"security_event": "consumer_flood", "service": service, "deleted": dict(deleted)},
        )
        self.announce(f"SECURITY: {flood.sentence()}")
        try:
            await self._record(flood)
        except (nats.errors.Error, TimeoutError) as exc:  # NATS away: the log line stays
            log.error("the consumer flood was not recorded", extra={"service": service, "error": str(exc)})

    async def _record(self, flood: Flood) -> None:
        """One record per flooded stream on PLATFORM_FINDINGS, in PARKED's header shape (`parley parked`)."""
        js = self.nc.jetstream()
        for stream, count in sorted(flood.deleted.items()):
            headers = {
                "Parley-Parked-Kind": CONSUMER_FLOOD,
                "Parley-Parked-Reason": flood.sentence()[:500],
                "Parley-Original-Stream": stream,
                "Parley-Original-Subject": "",
                "Parley-Original-Sequence": "",
                "Parley-Consumer": f"{count} made by {flood.service}",
            }
            body = json.dumps({"service": flood.service, "stream": stream, "deleted": count, "quota": flood.quota})
            await js.publish(platform_finding_subject(CONSUMER_FLOOD, stream), body.encode(), headers=headers)

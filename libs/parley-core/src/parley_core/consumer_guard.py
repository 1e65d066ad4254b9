"""The platform's consumer guard: every JetStream consumer judged as it is made, the rest deleted.

Run with the platform identity where the platform is supervised (`parley up`), on a NATS
connection of its own. JetStream tells the streams' account of every API call and of who made it
(the audit advisory, `$JS.EVENT.ADVISORY.API`, whose client account is the server's word); the
platform's account imports those advisories (natsconf). A push consumer can deliver stored
messages onto the same subject (a red team forged 120 advisories naming messaging so): the server
publishes an advisory with no reply subject and no headers, while a consumer's delivery always has
a `$JS.ACK.` reply, so the guard takes only the former and counts the rest as forgeries (logged as
`security_event: forged_advisory`, the delivering consumer deleted). Each consumer made is judged at once
(parley_core.consumer_policy) and deleted if it may not stay; a sweep of every stream's
consumers (CONSUMER.LIST) catches what was made while the guard did not watch (before its
start, across a reconnect). A consumer a service may not keep, made with that service's
credential, is a security finding: logged with `security_event: consumer_flood`, announced, and
recorded on the platform's own PLATFORM_FINDINGS stream
(`parley.platform.finding.consumer-flood.<stream>`, which no service may write, so no flood of
parked copies in PARKED can push it out: `parley parked` marks it SECURITY, a SIEM follows
`parley.platform.>`). A credential that keeps
at it is handed to `quarantine`: the platform takes its account's consumer-create imports away
until an operator lifts it (`parley consumers lift`). The reports and the quarantine are
parley_core.consumer_floods'.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from parley_core.bus import CONSUMER_NOT_FOUND, durable_config
from parley_core.consumer_floods import QUARANTINE_AFTER, UNATTRIBUTED, Flood, FloodReports
from parley_core.consumer_policy import DECLARED, EPHEMERAL_QUOTA, ConsumerSeen, Verdict, judge
from parley_core.jobs import PeriodicJob, every
from parley_core.nats_accounts import JS_API, JS_API_AUDIT, JS_CONSUMER_DELETED, account_of
from parley_core.topology import (
    CONSUMERS,
    PLATFORM_USER,
    SERVICES,
    SIEM_CONSUMERS,
    STREAMS,
)

log = logging.getLogger(__name__)

# How long a stop waits for an unsubscribe or a cancelled task before going on without it.
STOP_WAIT_S = 5.0
API_AUDIT = JS_API_AUDIT
CONSUMER_DELETED = JS_CONSUMER_DELETED
# A consumer no advisory named is judged only once it is this old: its advisory may be on its way.
ADVISORY_GRACE_S = 2.0
SWEEP_EVERY_S = 10.0
DELETERS = 16  # deletions in flight at once: a flood is undone at the server's pace
DELETE_ATTEMPTS = 4
REQUEST_TIMEOUT_S = 5.0

# A delivered message's subscription buffer: an audit advisory carries the call's whole request
# (up to max_payload), and a junk flood of them must not make the guard drop the real ones.
PENDING_MSGS = 1_000_000
PENDING_BYTES = 512 * 1024 * 1024
# The audit's subject comes before its request (nats-server's field order): found in the first
# bytes, so a call that made no consumer is skipped without parsing a big body.
_AUDIT_SUBJECT = re.compile(rb'"subject":"([^"\\]*)"')
_AUDIT_HEAD = 8192
FORGERY_LOG_EVERY_S = 10.0

USER_OF_ACCOUNT = {account_of(user): user for user in (*SERVICES, PLATFORM_USER)}
_CREATE_CALLS = (f"{JS_API}.CONSUMER.CREATE.", f"{JS_API}.CONSUMER.DURABLE.CREATE.")


def seen_from_info(info: dict[str, Any], creator: str | None) -> ConsumerSeen:
    """A consumer as JetStream's API describes it (a create answer, a CONSUMER.LIST entry)."""
    config = info.get("config") or {}
    filters = tuple(
        config.get("filter_subjects") or ([config["filter_subject"]] if config.get("filter_subject") else [])
    )
    return ConsumerSeen(
        stream=str(info.get("stream_name", "")),
        name=str(info.get("name", "")),
        durable=bool(config.get("durable_name")),
        filter_subjects=filters,
        inactive_threshold_s=int(config.get("inactive_threshold") or 0) / 1e9,
        creator=creator,
        deliver_subject=str(config.get("deliver_subject") or ""),
    )


@dataclass
class _Kept:
    creator: str | None
    counted: bool  # an ephemeral consumer within its maker's quota


@dataclass
class ConsumerGuard:
    """Watches, judges and deletes; `start()` once the streams exist, `stop()` when the platform stops."""

    nc: Client
    quota: int = EPHEMERAL_QUOTA
    quarantine_after: int = QUARANTINE_AFTER
    streams: tuple[str, ...] = tuple(s.name for s in STREAMS)
    sweep_every_s: float = SWEEP_EVERY_S
    # Told of each finding (`parley up` prints it); and asked to take a flooding service's rights away.
    announce: Callable[[str], None] = lambda _text: None
    quarantine: Callable[[str, str], Awaitable[None]] | None = None
    deleted: Counter[str] = field(default_factory=Counter)  # why -> how many, for tests and status
    forged: int = 0  # messages on an advisory subject that the server did not publish
    _kept: dict[tuple[str, str], _Kept] = field(default_factory=dict)
    _counts: Counter[tuple[str, str]] = field(default_factory=Counter)  # (service, stream) -> kept ephemerals
    _doomed: asyncio.Queue[tuple[str, str]] = field(default_factory=asyncio.Queue)
    _deleting: set[tuple[str, str]] = field(default_factory=set)  # queued: a sweep judges them no second time
    _deleted: set[tuple[str, str]] = field(default_factory=set)  # since the last sweep
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _sweeps: PeriodicJob | None = None
    _subs: list[Any] = field(default_factory=list)
    _started_at: float = 0.0
    _forgery_logged: float = float("-inf")
    _floods: FloodReports = field(init=False)

    def __post_init__(self) -> None:
        self._floods = FloodReports(
            self.nc, self.quota, self.quarantine_after, announce=self.announce, quarantine=self.quarantine
        )

    @property
    def findings(self) -> list[Flood]:
        return self._floods.findings

    @property
    def quarantined(self) -> set[str]:
        return self._floods.quarantined

    async def start(self) -> None:
        self._started_at = time.time()
        self._subs = [
            await self.nc.subscribe(subject, cb=cb, pending_msgs_limit=PENDING_MSGS, pending_bytes_limit=PENDING_BYTES)
            for subject, cb in ((API_AUDIT, self._on_api_call), (CONSUMER_DELETED, self._on_deleted))
        ]
        await self.nc.flush(timeout=int(REQUEST_TIMEOUT_S))
        self._tasks = [
            asyncio.create_task(self._delete_doomed(), name="consumer-guard-delete") for _ in range(DELETERS)
        ]
        await self.sweep()
        # The advisories are the fast path; the sweep catches the rest. Read-only but for the deletions
        # it queues: cut short at a stop.
        self._sweeps = every(
            self.sweep_every_s, self.sweep, name="consumer-guard-sweep", first_after=self.sweep_every_s, grace=0.0
        )
        self._sweeps.start()

    async def stop(self) -> None:
        """Bounded: a connection that stopped answering (a flood, a reload) must not hold up a stop."""
        if self._sweeps is not None:
            await self._sweeps.stop()
        for sub in self._subs:
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                await asyncio.wait_for(sub.unsubscribe(), STOP_WAIT_S)
        tasks = [*self._tasks, *self._floods.tasks]
        for task in tasks:
            task.cancel()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), STOP_WAIT_S)
        self._tasks, self._subs, self._floods.tasks = [], [], []

    def kept(self, service: str, stream: str) -> int:
        """Ephemeral consumers `service` keeps on `stream` now, as the guard counts them."""
        return self._counts[(service, stream)]

    def lifted(self, service: str) -> None:
        """An operator lifted the service's quarantine: its flood count starts again."""
        self._floods.lifted(service)

    # -- what the server tells ---------------------------------------------------------------

    def _from_server(self, msg: Msg) -> bool:
        """The server publishes an advisory bare; a consumer's delivery has a `$JS.ACK.` reply (and
        a stored message's headers): a forgery, whose consumer goes."""
        if not msg.reply and not msg.headers:
            return True
        self.forged += 1
        consumer = None
        with contextlib.suppress(Exception):  # no JetStream metadata: a plain publish, nothing to delete
            meta = msg.metadata
            consumer = (meta.stream, meta.consumer)
        if consumer is not None and consumer not in self._deleting:
            self._deleting.add(consumer)
            self._doomed.put_nowait(consumer)
        now = time.monotonic()
        if now - self._forgery_logged >= FORGERY_LOG_EVERY_S:
            self._forgery_logged = now
            log.error(
                "security: a message on a JetStream advisory subject did not come from the server",
                extra={
                    "security_event": "forged_advisory",
                    "subject": msg.subject,
                    "consumer": "/".join(consumer) if consumer else None,
                    "forged": self.forged,
                },
            )
        return False

    async def _on_api_call(self, msg: Msg) -> None:
        if not self._from_server(msg):
            return
        head = _AUDIT_SUBJECT.search(msg.data[:_AUDIT_HEAD])
        if head is not None and not head.group(1).decode(errors="replace").startswith(_CREATE_CALLS):
            return  # not a consumer made: its (maybe huge) request is never parsed
        try:
            audit = json.loads(msg.data)
            subject = str(audit.get("subject", ""))
            if not subject.startswith(_CREATE_CALLS):
                return
            answer = json.loads(audit.get("response") or "{}")
        except (ValueError, AttributeError):
            return
        if not isinstance(answer, dict) or "error" in answer or not answer.get("name"):
            return  # refused: nothing was made
        creator = USER_OF_ACCOUNT.get(str((audit.get("client") or {}).get("acc", "")))
        self._judge(seen_from_info(answer, creator))

    async def _on_deleted(self, msg: Msg) -> None:
        if not self._from_server(msg):
            return
        with contextlib.suppress(ValueError, AttributeError):
            gone = json.loads(msg.data)
            self._forget(str(gone.get("stream", "")), str(gone.get("consumer", "")))

    def _forget(self, stream: str, name: str) -> None:
        kept = self._kept.pop((stream, name), None)
        if kept is not None and kept.counted and kept.creator is not None:
            self._counts[(kept.creator, stream)] -= 1

    def _judge(self, consumer: ConsumerSeen) -> Verdict:
        key = (consumer.stream, consumer.name)
        self._forget(*key)  # an update of one it knew: judged again, counted once
        creator = consumer.creator
        verdict = judge(consumer, kept_of_creator=self._counts[(creator or "", consumer.stream)], quota=self.quota)
        if verdict.keep:
            counted = creator not in (None, PLATFORM_USER) and key not in DECLARED
            self._kept[key] = _Kept(creator, counted)
            if counted and creator is not None:
                self._counts[(creator, consumer.stream)] += 1
            return verdict
        self.deleted[verdict.why] += 1
        self._deleting.add(key)
        self._doomed.put_nowait(key)
        if verdict.violation and creator is not None:
            self._floods.violated(creator, consumer.stream)
        else:
            log.warning("consumer %s of %s deleted by the guard: %s", key[1], key[0], verdict.why)
        return verdict

    # -- deleting, sweeping ------------------------------------------------------------------

    async def _delete_doomed(self) -> None:
        while True:
            stream, name = await self._doomed.get()
            try:
                deleted = await self._delete(stream, name)
            finally:
                self._deleting.discard((stream, name))
            if deleted:
                self._deleted.add((stream, name))  # a sweep's listing may be older than the deletion
            else:  # NATS busy or reloading: the next sweep finds it again if it is still there
                log.warning("deleting a consumer failed; the next sweep tries again", extra={"stream": stream})

    async def _delete(self, stream: str, name: str) -> bool:
        """Delete it (gone already counts); a few tries, since a reload briefly answers nothing."""
        for attempt in range(DELETE_ATTEMPTS):
            try:
                answer = await self.nc.request(
                    f"{JS_API}.CONSUMER.DELETE.{stream}.{name}", b"", timeout=REQUEST_TIMEOUT_S
                )
                error = json.loads(answer.data).get("error")
                if not error or error.get("err_code") == CONSUMER_NOT_FOUND:
                    return True
            except (nats.errors.Error, TimeoutError, ValueError):
                pass
            await asyncio.sleep(0.2 * 2**attempt)  # backoff before the next try
        return False

    async def sweep(self) -> None:
        """Judge every consumer no advisory named (made before the guard watched, or missed)."""
        for stream in self.streams:
            known_before = [k for k in self._kept if k[0] == stream]  # one made while listing is not missing
            listed = {str(info.get("name", "")): info async for info in self._list(stream)}
            for key in [k for k in known_before if k[1] not in listed]:
                self._forget(*key)  # gone without an advisory reaching us
            for name, info in listed.items():
                key = (stream, name)
                known = key in self._kept or key in self._deleting or key in self._deleted
                if not known and (age := _age_s(info)) >= ADVISORY_GRACE_S:
                    verdict = self._judge(seen_from_info({**info, "stream_name": stream}, None))
                    if not verdict.keep and age < time.time() - self._started_at:
                        # Made while the guard watched, yet no advisory named it: they were lost.
                        self._floods.violated(UNATTRIBUTED, stream)
        self._deleted.clear()  # the next sweep lists after these deletions

    async def _list(self, stream: str) -> Any:
        offset = 0
        while True:
            body = json.dumps({"offset": offset}).encode()
            try:
                answer = json.loads(
                    (await self.nc.request(f"{JS_API}.CONSUMER.LIST.{stream}", body, timeout=REQUEST_TIMEOUT_S)).data
                )
            except ValueError:
                return
            if "error" in answer:
                return  # no such stream (yet)
            page = answer.get("consumers") or []
            for info in page:
                yield info
            offset += len(page)
            if not page or offset >= int(answer.get("total", 0)):
                return


def _age_s(info: dict[str, Any]) -> float:
    """How long ago the server made it (its `created`, RFC 3339 with nanoseconds)."""
    try:
        made = datetime.fromisoformat(str(info.get("created", "")))
    except ValueError:
        return float("inf")
    return time.time() - made.timestamp()


async def ensure_declared_durables(nc: Client, specs: Iterable[Any] = (*CONSUMERS, *SIEM_CONSUMERS)) -> list[str]:
    """Make every declared durable that does not exist yet (the platform, before the services start),
    so no flood can keep one from being made; an existing one is left as it is (it may resume
    from where its service put it). Returns the ones made."""
    js = nc.jetstream()
    made = []
    for spec in specs:
        try:
            await js.consumer_info(spec.stream, spec.durable)
            continue
        except nats.js.errors.NotFoundError:
            pass
        await js.add_consumer(spec.stream, durable_config(spec))
        made.append(f"{spec.stream}/{spec.durable}")
    return made

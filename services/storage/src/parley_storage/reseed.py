"""Re-seeding the event log of a restored data folder from its archive.

A backup holds the archive, not the JetStream event log, yet accounts, sessions, channels, the
audit chain and the registry's roll-outs are rebuilt by replaying that log. On a restored folder
`parley up` therefore puts the archive back into the log first, as the operator's platform
identity and before any service starts (``python -m parley_storage.reseed``):

- every event goes back on its original subject at its original stream sequence (each publish
  expects the sequence before it), so storage's archive positions match the new log, nothing is
  archived twice, and the per-subject sequences the services' append guards check are as before;
- an event the archive cannot open (its author's key was shredded, or a redaction or retention
  removed its text) leaves a hole at its sequence: a placeholder is published there and deleted
  at once. The markers those removals led to (MessagesErased, AccountErased, MessageRedacted,
  MessagesExpired) are archived events themselves and come back, so the services rebuild from the
  new log as they did from the old one;
- an erasure the backup predates (the keyring destroyed the user's keys after it was taken) has
  its due facts recorded on STORE, as the erasure itself would (stream_erasure.request_markers):
  auth and messaging append their markers when they start, before they serve, so the erased stay
  erased (the name taken, the numbers used); storage then finishes it in the log;
- an audited ``EventLogRestored`` record on STORE closes the work, and the folder's restore marker
  is removed, which lets storage start.

Interrupted, it resumes where it stopped: each stream's last sequence says how far it got.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from parley.auth.v1.events_pb2 import AccountErasureRequested
from sqlalchemy import Engine, func, select

from parley_core.actor import Actor
from parley_core.bus import WRONG_LAST_SEQUENCE_CODES, ConcurrencyConflict, EventBus
from parley_core.config import Settings
from parley_core.envelope import NewEvent, decode
from parley_core.nats_connect import connect_nats
from parley_core.natsconf import ensure_nats_passwords
from parley_core.topology import (
    CONSUMERS,
    PLATFORM_USER,
    erasure_request_subject,
    reseed_hole_subject,
    restore_subject,
)
from parley_storage import codec
from parley_storage.archive import SqlEventArchive, StoredEvent, open_engine
from parley_storage.datakeys import DataKeys
from parley_storage.domain import StreamReseeded, decide_finished_after_restore, decide_log_restored
from parley_storage.kek import FileKeyring, KeyringUnreadable
from parley_storage.key_files import KEYRING_FILE
from parley_storage.migrate import SchemaNewerThanCode, UnversionedDatabase, check_schema_compatible
from parley_storage.residency import location_of
from parley_storage.restored import RestoreMarker, clear_restored, marker_path, read_restored
from parley_storage.schema import events
from parley_storage.service import configured_database_url, database_url
from parley_storage.store_log import record
from parley_storage.stream_erasure import request_markers
from parley_storage.stream_log import read_if_present

# The streams storage archives, in the order they are put back.
RESEEDED_STREAMS = tuple(spec.stream for spec in CONSUMERS if spec.service == "storage")
PAGE = 500


class ReseedRefused(Exception):
    """The event log holds events that are not this archive's; nothing was changed."""


def counted(n: int, noun: str) -> str:
    """`1 event`, `3 events`: what the re-seed says it did, as a person would write it."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


async def reseed_stream(
    js: JetStreamContext, archive: SqlEventArchive, stream: str, *, page: int = PAGE
) -> StreamReseeded:
    """Put one stream's archived events back at their sequences, continuing after what it holds.

    A page of events is published at once (in order on one connection, each expecting the
    sequence before it, so the stream always holds an unbroken prefix), then its placeholders
    are deleted: an interrupted run can only have left placeholders in its last page.
    """
    newest = await archive.newest_seq(stream)
    done = int((await js.stream_info(stream)).state.last_seq or 0)
    if done > newest:
        raise ReseedRefused(
            f"stream {stream} already holds events up to sequence {done}, past the archive's newest ({newest}): "
            "this event log is not the restored archive's; restore into an empty data folder"
        )
    await _delete_placeholders(js, stream, range(max(done - page, 0) + 1, done + 1))
    await _refuse_another_prefix(js, archive, stream, done)
    after = done
    while after < newest:
        stored, _ = await archive.stream_events(stream, after_seq=after, limit=page)
        placed: list[Placed] = []
        for event in stored:
            placed.extend(Placed.placeholder(stream, missing) for missing in range(after + 1, event.stream_seq))
            placed.append(Placed.of(event))
            after = event.stream_seq
        for start in range(0, len(placed), page):  # never more than a page in flight
            batch = placed[start : start + page]
            await _publish_in_order(js, stream, batch)
            for hole in (p for p in batch if p.hole):
                await js.delete_msg(stream, hole.seq)
    state = (await js.stream_info(stream)).state
    last, messages = int(state.last_seq or 0), int(state.messages or 0)
    if last != newest:
        raise ReseedRefused(f"stream {stream} ends at sequence {last} after re-seeding, not at the archive's {newest}")
    return StreamReseeded(stream=stream, events=messages, holes=last - messages, last_seq=last)


@dataclass(frozen=True)
class Placed:
    """What goes at one sequence: an archived event, or a placeholder to delete (a hole)."""

    seq: int
    subject: str
    data: bytes
    headers: dict[str, str]
    hole: bool

    @classmethod
    def of(cls, event: StoredEvent) -> Placed:
        if event.envelope is None:  # shredded, or its text removed: the archive cannot give it back
            return cls.placeholder(event.stream, event.stream_seq)
        headers = dict(event.envelope.trace_context)  # as its append wrote them (its trace)
        return cls(event.stream_seq, event.subject, event.envelope.SerializeToString(), headers, hole=False)

    @classmethod
    def placeholder(cls, stream: str, seq: int) -> Placed:
        return cls(seq, reseed_hole_subject(stream), b"", {}, hole=True)


async def _publish_in_order(js: JetStreamContext, stream: str, batch: list[Placed]) -> None:
    """Each message lands at its sequence or not at all, and none after one that did not."""
    pending = [
        await js.publish_async(
            placed.subject, placed.data, headers={**placed.headers, "Nats-Expected-Last-Sequence": str(placed.seq - 1)}
        )
        for placed in batch
    ]
    for placed, future in zip(batch, pending, strict=True):
        try:
            ack = await future
        except nats.js.errors.APIError as exc:
            if exc.err_code not in WRONG_LAST_SEQUENCE_CODES:
                raise
            raise ReseedRefused(
                f"stream {stream} changed while it was being re-seeded (at sequence {placed.seq}): "
                "is something else writing to this event log? Stop it and start `parley up` again"
            ) from None
        if ack.stream != stream or ack.seq != placed.seq:
            raise ReseedRefused(
                f"{placed.subject} landed in {ack.stream} at {ack.seq}, not in {stream} at {placed.seq}"
            )


async def _delete_placeholders(js: JetStreamContext, stream: str, seqs: range) -> None:
    """Placeholders an interrupted run published but had not deleted yet."""
    for seq in seqs:
        found = await read_if_present(js, stream, seq)
        if found is not None and found.subject == reseed_hole_subject(stream):
            await js.delete_msg(stream, seq)


async def _refuse_another_prefix(js: JetStreamContext, archive: SqlEventArchive, stream: str, done: int) -> None:
    """Continue only a log this re-seed began: its newest event is the archive's at that sequence
    (a service started on the folder meanwhile would have appended events of its own there)."""
    newest = None
    for seq in range(done, 0, -1):  # the newest event still there: placeholders were deleted
        if (newest := await read_if_present(js, stream, seq)) is not None:
            break
    if newest is None:
        return
    seq = int(newest.seq or 0)
    stored, _ = await archive.stream_events(stream, after_seq=seq - 1, limit=1)
    if not stored or stored[0].stream_seq != seq or decode(newest.data or b"").event_id != stored[0].event_id:
        raise ReseedRefused(
            f"stream {stream} holds an event at sequence {seq} that is not the archive's: something wrote to this "
            "event log before it was re-seeded; restore the backup again into an empty data folder"
        )


async def already_recorded(js: JetStreamContext, backup_id: str) -> bool:
    """The closing record exists: an earlier run finished everything but removing the marker."""
    try:
        await js.get_last_msg("STORE", restore_subject(backup_id), direct=True)
    except nats.js.errors.NotFoundError:
        return False
    return True


async def finish_erasures(bus: EventBus, archive: SqlEventArchive, marker: RestoreMarker) -> list[str]:
    """Erasures this archive does not know finished: someone erased after the backup was taken
    (the keyring no longer holds their keys) has holes in the re-seeded log but no markers, so
    without them their name would be free and the number of their newest message reused. Each
    gets its audited record (unless the backup has it) and its due facts, before any service
    starts: the owners mark them before they serve, and storage finishes the erasure (it has no
    UserDataErasedFromStreams yet)."""
    finished = []
    for erasure in await archive.unfinished_erasures():
        if not erasure.recorded:
            facts, _ = decide_finished_after_restore(
                erasure.user_id, erasure.destroyed_key_ids, backup_id=marker.backup_id, by=PLATFORM_USER
            )
            await record(bus, facts, Actor.PLATFORM)
        await _erasure_requested(bus, erasure.user_id, marker.backup_id)
        await request_markers(bus, archive, erasure.user_id)
        finished.append(erasure.user_id)
    return finished


async def _erasure_requested(bus: EventBus, user_id: str, backup_id: str) -> None:
    """Auth acts on an erasure's facts only if its request is on AUTH; a backup taken before the
    request lacks it, and the keyring says the erasure was decided: the operator's identity, which
    restores the log, records the request there too (as auth would have)."""
    if await bus.last_subject_seq("AUTH", erasure_request_subject(user_id)):
        return
    requested = AccountErasureRequested(
        user_id=user_id, requested_by=PLATFORM_USER, reason=f"erased after backup {backup_id} was taken"
    )
    event = NewEvent(
        aggregate_type="erasure",
        aggregate_id=user_id,
        payload=requested,
        actor=Actor.PLATFORM,
        event_id=f"erasure-requested-{user_id}",
    )
    await bus.append_after_last(erasure_request_subject(user_id), event)


async def record_restore(
    bus: EventBus, marker: RestoreMarker, streams: list[StreamReseeded], erasures_finished: list[str]
) -> None:
    [restored], _ = decide_log_restored(
        backup_id=marker.backup_id,
        backup_created_at=marker.backup_created_at,
        streams=streams,
        erasures_finished=erasures_finished,
    )
    event = codec.new_event(restored, Actor.PLATFORM)
    with contextlib.suppress(ConcurrencyConflict):  # recorded by an earlier run stopped before the marker went
        await bus.append(codec.subject_of(restored), event, aggregate_version=1, expected_last_subject_seq=0)


def _refuse_unfinished_restore(engine: Engine, marker: RestoreMarker, data_dir: Path) -> None:
    """The restore marks the folder just before it commits; cut short in between, the archive is
    empty (the commit is all or nothing) and re-seeding it would start an empty platform."""
    with engine.connect() as conn:
        archived = conn.execute(select(func.count()).select_from(events)).scalar_one()
    if archived < marker.events:
        raise ReseedRefused(
            f"the restore of backup {marker.backup_id} did not finish (the archive holds {archived} of its "
            f"{marker.events} events): remove {marker_path(data_dir).parent} and run `parley backup restore` again"
        )


async def reseed_folder(
    settings: Settings, *, nats_url: str, say: Callable[[str], None] = print
) -> list[StreamReseeded]:
    """Re-seed the event log of a restored folder, then let storage start on it."""
    data_dir = settings.data_dir
    marker = read_restored(data_dir)
    if marker is None:
        return []
    configured = location_of(settings.database_url) if settings.database_url else ""
    if configured != marker.database:
        raise ReseedRefused(
            f"{data_dir} was restored into {marker.database or 'its own SQLite archive'}, but storage is set to use "
            f"{configured or 'the SQLite archive in the data folder'}: start it with "
            + (
                f"PARLEY_DATABASE_URL set to {marker.database} (and its password)"
                if marker.database
                else "no PARLEY_DATABASE_URL"
            )
        )
    engine = open_engine(database_url(settings))
    try:
        check_schema_compatible(engine)
        _refuse_unfinished_restore(engine, marker, data_dir)
    except BaseException:
        engine.dispose()
        raise
    password = ensure_nats_passwords(settings.nats_passwords_file, [PLATFORM_USER])[PLATFORM_USER]
    nc = await connect_nats(
        url=nats_url, user=PLATFORM_USER, password=password, ca_cert=settings.pki_dir / "ca.crt", name="parley-reseed"
    )
    try:
        keyring = FileKeyring.load_or_create(settings.secrets_dir / KEYRING_FILE)
        archive = SqlEventArchive(engine, DataKeys(keyring))
        js = nc.jetstream()
        done: list[StreamReseeded] = []
        if not await already_recorded(js, marker.backup_id):
            for stream in RESEEDED_STREAMS:
                done.append(await reseed_stream(js, archive, stream))
                say(f"{stream}: {counted(done[-1].events, 'event')} back in the log, {counted(done[-1].holes, 'hole')}")
            bus = EventBus(nc, service=PLATFORM_USER, producer=f"parley-restore@{metadata.version('parley-storage')}")
            finished = await finish_erasures(bus, archive, marker)
            if finished:
                say(
                    f"{counted(len(finished), 'erasure')} the backup predates handed to auth and messaging"
                    " (they mark it before serving; erased stay erased)"
                )
            await record_restore(bus, marker, done, finished)
        clear_restored(data_dir)
        return done
    finally:
        await nc.close()
        engine.dispose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="parley-storage-reseed", description="put a restored archive back into an empty event log"
    )
    parser.add_argument("--data-dir", type=Path, default=Path(".parley"))
    parser.add_argument("--nats-url", required=True, help="the platform's NATS URL(s), comma-separated")
    parser.add_argument("--database-url", default="", help="default: $PARLEY_DATABASE_URL or SQLite in the data folder")
    args = parser.parse_args(argv)
    settings = Settings(service="storage", data_dir=args.data_dir)
    if args.database_url:
        settings.database_url = args.database_url
    settings.database_url = configured_database_url(settings)

    def say(line: str) -> None:
        print(line, flush=True)

    try:
        streams = asyncio.run(reseed_folder(settings, nats_url=args.nats_url, say=say))
    except (ReseedRefused, SchemaNewerThanCode, UnversionedDatabase, KeyringUnreadable) as exc:
        print(f"re-seeding the event log failed: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    except (nats.errors.Error, TimeoutError, OSError) as exc:
        print(f"re-seeding the event log stopped ({exc!r}); it resumes at the next start", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        print("re-seeding the event log was interrupted; it resumes at the next start", file=sys.stderr)
        raise SystemExit(130) from None
    print(json.dumps({"reseeded": [asdict(s) for s in streams]}, sort_keys=True))


if __name__ == "__main__":
    main()

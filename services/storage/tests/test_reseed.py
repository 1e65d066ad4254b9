"""Re-seeding a restored folder's event log from its archive: a real nats-server, the archive on
SQLite and PostgreSQL. Every readable event lands at its original sequence on its subject, what
the archive cannot open leaves a hole there, an interrupted run resumes, and a log that is not
the archive's is refused untouched."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import nats.js.errors
import pytest
from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg
from parley.auth.v1.events_pb2 import AccountErasureRequested, UserRegistered
from parley.common.v1.envelope_pb2 import EventEnvelope
from parley.messaging.v1.events_pb2 import ChannelCreated, MessagePosted
from parley.storage.v1.events_pb2 import AccountErasureDue, ChannelErasureDue, EventLogRestored, UserDataErased

from parley_core.bus import EventBus, ReceivedEvent
from parley_core.config import Settings
from parley_core.envelope import NewEvent, decode, open_payload, seal
from parley_core.pki import Pki
from parley_core.runner import RefusedToStart
from parley_core.topology import (
    PLATFORM_USER,
    STREAMS,
    channel_subject,
    due_subject,
    erasure_request_subject,
    privacy_subject,
    reseed_hole_subject,
    restore_subject,
    user_subject,
    username_subject,
)
from parley_storage.archive import SqlEventArchive
from parley_storage.key_files import KEYRING_FILE
from parley_storage.reseed import (
    RESEEDED_STREAMS,
    Placed,
    ReseedRefused,
    _publish_in_order,
    reseed_folder,
    reseed_stream,
)
from parley_storage.residency import location_of
from parley_storage.restored import mark_restored, read_restored
from parley_storage.service import refuse_a_log_behind_the_archive
from parley_testing.nats import NatsTestServer

ALICE, BOB = "user-alice", "user-bob"
ALICE_NAME = username_subject(hashlib.sha256(b"alice").hexdigest())
MESSAGING_DUE, AUTH_DUE = due_subject("messaging", "erasure", ALICE), due_subject("auth", "erasure", ALICE)


def event(stream: str, seq: int, subject: str, aggregate: tuple[str, str, int], payload: object) -> ReceivedEvent:
    aggregate_type, aggregate_id, version = aggregate
    envelope = seal(
        NewEvent(aggregate_type=aggregate_type, aggregate_id=aggregate_id, payload=payload, actor=ALICE),  # type: ignore[arg-type]
        aggregate_version=version,
        producer="test@0",
        trace_context={"traceparent": f"00-{seq:032x}-{seq:016x}-01"},
    )
    return ReceivedEvent(envelope, subject, stream, seq, 1, {})


def seal_new(payload: object) -> EventEnvelope:
    """An event as a service would append it now: not one of the archive's."""
    new = NewEvent(aggregate_type="channel", aggregate_id="general", payload=payload, actor=BOB)  # type: ignore[arg-type]
    return seal(new, aggregate_version=1, producer="messaging@0", trace_context={})


def post(seq: int, channel_seq: int, sender: str) -> ReceivedEvent:
    body = MessagePosted(channel_id="general", sender_id=sender, channel_seq=channel_seq, body=f"post {channel_seq}")
    return event("MSG", seq, channel_subject("general"), ("channel", "general", channel_seq + 1), body)


async def archive_with_holes(archive: SqlEventArchive) -> None:
    """AUTH: alice, bob. MSG: a channel, posts by alice and bob, sequence 5 never archived, then
    bob again. Alice's keys are shredded afterwards, as an erasure after the backup leaves them:
    her account and posts no longer open, and the archive holds no record of her erasure."""
    await archive.archive(
        "storage-archive-auth",
        [
            event("AUTH", 1, ALICE_NAME, ("user", ALICE, 1), UserRegistered(user_id=ALICE, username="alice")),
            event("AUTH", 2, user_subject(BOB), ("user", BOB, 1), UserRegistered(user_id=BOB, username="bob")),
        ],
    )
    created = event(
        "MSG", 1, channel_subject("general"), ("channel", "general", 1), ChannelCreated(channel_id="general")
    )
    await archive.archive(
        "storage-archive-msg", [created, post(2, 1, ALICE), post(3, 2, BOB), post(4, 3, ALICE), post(6, 4, BOB)]
    )
    await archive.shred_user(ALICE)


async def stream_contents(js: JetStreamContext, stream: str) -> dict[int, tuple[str, bytes] | None]:
    """Every sequence of the stream: (subject, data), or None for a hole."""
    last = int((await js.stream_info(stream)).state.last_seq or 0)
    out: dict[int, tuple[str, bytes] | None] = {}
    for seq in range(1, last + 1):
        try:
            msg = await js.get_msg(stream, seq)
        except nats.js.errors.NotFoundError:
            out[seq] = None
            continue
        out[seq] = (msg.subject, msg.data or b"")
    return out


async def stream_messages(js: JetStreamContext, stream: str, subject: str) -> list[RawStreamMsg]:
    """The messages of one subject, oldest first."""
    out = []
    for seq, found in (await stream_contents(js, stream)).items():
        if found is not None and found[0] == subject:
            out.append(await js.get_msg(stream, seq))
    return out


async def platform_js(nats_server: NatsTestServer) -> JetStreamContext:
    nc = await nats_server.connect(PLATFORM_USER)
    await EventBus(nc, service=PLATFORM_USER, producer="test").ensure_streams(STREAMS)
    return nc.jetstream()


@pytest.mark.parametrize("page", [2, 500])  # several pages in flight one after another, or one
async def test_every_readable_event_goes_back_at_its_sequence_and_the_rest_are_holes(
    archive: SqlEventArchive, nats_server: NatsTestServer, page: int
) -> None:
    await archive_with_holes(archive)
    js = await platform_js(nats_server)

    auth = await reseed_stream(js, archive, "AUTH", page=page)
    msg = await reseed_stream(js, archive, "MSG", page=page)

    assert (auth.events, auth.holes, auth.last_seq) == (1, 1, 2)  # alice's registration is a hole
    assert (msg.events, msg.holes, msg.last_seq) == (3, 3, 6)  # her two posts, and the unarchived 5
    contents = await stream_contents(js, "MSG")
    assert [seq for seq, found in contents.items() if found is None] == [2, 4, 5]
    archived, _ = await archive.stream_events("MSG", after_seq=0, limit=10)
    for stored in (e for e in archived if e.envelope is not None):
        subject, data = contents[stored.stream_seq] or ("", b"")
        assert subject == stored.subject
        assert decode(data) == stored.envelope  # the very envelope: id, version, time, trace, payload
    payloads = [open_payload(decode(found[1])) for found in contents.values() if found is not None]
    assert [p.body for p in payloads if isinstance(p, MessagePosted)] == ["post 2", "post 4"]  # bob's
    # A later append to the channel continues after the restored sequences, as it would have.
    ack = await js.publish(channel_subject("general"), b"next", headers={"Nats-Expected-Last-Subject-Sequence": "6"})
    assert ack.seq == 7


async def test_an_interrupted_reseed_resumes_without_duplicates(
    archive: SqlEventArchive, nats_server: NatsTestServer
) -> None:
    await archive_with_holes(archive)
    js = await platform_js(nats_server)
    archived, _ = await archive.stream_events("MSG", after_seq=0, limit=10)
    # The first run stopped after publishing 1..3, before deleting its placeholder for 2 (alice's post).
    await _publish_in_order(js, "MSG", [Placed.of(e) for e in archived[:3]])
    assert (await js.get_msg("MSG", 2)).subject == reseed_hole_subject("MSG")

    resumed = await reseed_stream(js, archive, "MSG")

    assert (resumed.events, resumed.holes, resumed.last_seq) == (3, 3, 6)
    contents = await stream_contents(js, "MSG")
    assert [seq for seq, found in contents.items() if found is None] == [2, 4, 5]
    assert all(found is None or found[0] != reseed_hole_subject("MSG") for found in contents.values())


async def test_a_log_that_is_not_the_archives_is_refused_untouched(
    archive: SqlEventArchive, nats_server: NatsTestServer
) -> None:
    await archive_with_holes(archive)
    js = await platform_js(nats_server)
    for n in range(3):  # an event log of its own, longer than the archive's AUTH
        await js.publish(user_subject(f"someone-{n}"), b"x")

    with pytest.raises(ReseedRefused, match="past the archive's newest"):
        await reseed_stream(js, archive, "AUTH")

    state = (await js.stream_info("AUTH")).state
    assert (state.messages, state.last_seq) == (3, 3)


def restored_folder(tmp_path: Path, archive: SqlEventArchive, nats_server: NatsTestServer, pki: Pki) -> Path:
    """A data folder as restore leaves it: the marker, the keyring, and what `parley up` adds first
    (the CA, the NATS passwords)."""
    data_dir = tmp_path / "restored"
    (data_dir / "secrets").mkdir(parents=True)
    (data_dir / "pki").mkdir()
    keyring: Path = archive.keys.keks.path  # type: ignore[attr-defined]
    (data_dir / "secrets" / KEYRING_FILE).write_bytes(keyring.read_bytes())
    (data_dir / "secrets" / "nats-passwords.json").write_text(json.dumps(nats_server.passwords))
    (data_dir / "pki" / "ca.crt").write_bytes(pki.ca_cert.read_bytes())
    mark_restored(data_dir, "backup-1", "2026-11-30T12:00:00+00:00", database=location_of(archive_url(archive)))
    return data_dir


def archive_url(archive: SqlEventArchive) -> str:
    return archive.engine.url.render_as_string(hide_password=False)


async def test_the_folder_is_reseeded_once_recorded_and_released(
    archive: SqlEventArchive, nats_server: NatsTestServer, pki: Pki, tmp_path: Path
) -> None:
    await archive_with_holes(archive)
    data_dir = restored_folder(tmp_path, archive, nats_server, pki)
    js = await platform_js(nats_server)
    settings = Settings(service="storage", data_dir=data_dir, database_url=archive_url(archive))
    said: list[str] = []

    elsewhere = Settings(service="storage", data_dir=data_dir)  # no PARLEY_DATABASE_URL: its own SQLite
    with pytest.raises(ReseedRefused, match="PARLEY_DATABASE_URL set to"):
        await reseed_folder(elsewhere, nats_url=nats_server.url)
    assert read_restored(data_dir) is not None
    assert (await js.stream_info("MSG")).state.last_seq == 0  # nothing was put back from an empty archive

    done = await reseed_folder(settings, nats_url=nats_server.url, say=said.append)

    assert [(s.stream, s.events, s.holes) for s in done][:2] == [("AUTH", 1, 1), ("MSG", 3, 3)]
    assert said == [
        "AUTH: 1 event back in the log, 1 hole",
        "MSG: 3 events back in the log, 3 holes",
        *(f"{stream}: 0 events back in the log, 0 holes" for stream in RESEEDED_STREAMS[2:]),
        "1 erasure the backup predates handed to auth and messaging (they mark it before serving; erased stay erased)",
    ]
    assert read_restored(data_dir) is None  # storage may start now
    raw = await js.get_last_msg("STORE", restore_subject("backup-1"))
    record = open_payload(decode(raw.data or b""))
    assert isinstance(record, EventLogRestored)
    assert record.backup_created_at == "2026-11-30T12:00:00+00:00"
    assert {s.stream: (s.events, s.holes, s.last_seq) for s in record.streams}["MSG"] == (3, 3, 6)
    assert list(record.erasures_finished) == [ALICE]
    # Alice's erasure, made after the backup, is recorded, with what her name's and her posts'
    # owners must mark before anything else (they do when they start: the name stays taken, the
    # numbers stay used). Storage finishes it later. On AUTH the re-seed adds only the request auth
    # acts on (the backup predates it; the operator's identity records it, as it restores the log).
    erasure = [open_payload(decode(m.data or b"")) for m in await stream_messages(js, "STORE", privacy_subject(ALICE))]
    assert [type(e) for e in erasure] == [UserDataErased]
    assert "erased after backup backup-1 was taken" in erasure[0].reason  # type: ignore[attr-defined]
    [posts] = [open_payload(decode(m.data or b"")) for m in await stream_messages(js, "STORE", MESSAGING_DUE)]
    assert isinstance(posts, ChannelErasureDue)
    assert (posts.user_id, posts.channel_id, list(posts.channel_seqs)) == (ALICE, "general", [1, 3])
    [name] = [open_payload(decode(m.data or b"")) for m in await stream_messages(js, "STORE", AUTH_DUE)]
    assert isinstance(name, AccountErasureDue)
    assert (name.user_id, name.username_key) == (ALICE, ALICE_NAME.removeprefix("parley.auth.username."))
    assert (await js.stream_info("MSG")).state.last_seq == 6
    assert (await js.stream_info("AUTH")).state.last_seq == 3
    requested = open_payload(decode((await js.get_last_msg("AUTH", erasure_request_subject(ALICE))).data or b""))
    assert isinstance(requested, AccountErasureRequested)
    assert (requested.user_id, requested.requested_by) == (ALICE, "platform")
    # A run that stopped after the record but before removing the marker only removes it.
    mark_restored(data_dir, "backup-1", database=location_of(archive_url(archive)))
    assert await reseed_folder(settings, nats_url=nats_server.url) == []
    assert read_restored(data_dir) is None
    assert len(await stream_messages(js, "STORE", MESSAGING_DUE)) == 1  # recorded once


async def test_a_restore_cut_short_after_its_mark_is_not_reseeded(
    archive: SqlEventArchive, nats_server: NatsTestServer, pki: Pki, tmp_path: Path
) -> None:
    """Restore marks the folder just before its commit, with the number of events it put in the
    archive; killed in between, the archive is empty and the mark says more were due."""
    data_dir = restored_folder(tmp_path, archive, nats_server, pki)
    mark_restored(data_dir, "backup-1", database=location_of(archive_url(archive)), events=6)
    settings = Settings(service="storage", data_dir=data_dir, database_url=archive_url(archive))

    with pytest.raises(ReseedRefused) as refused:
        await reseed_folder(settings, nats_url=nats_server.url)

    assert f"did not finish (the archive holds 0 of its 6 events): remove {data_dir / 'storage'}" in str(refused.value)
    assert read_restored(data_dir) is not None  # the folder stays refused to storage
    js = await platform_js(nats_server)
    assert [(await js.stream_info(stream)).state.last_seq for stream in ("AUTH", "MSG", "STORE")] == [0, 0, 0]


async def test_a_log_another_writer_began_is_not_continued(
    archive: SqlEventArchive, nats_server: NatsTestServer
) -> None:
    """A service started on the folder before its re-seed (its mark was removed) wrote events of
    its own where the archive's belong: re-seeding on top would mix the two logs."""
    await archive_with_holes(archive)
    js = await platform_js(nats_server)
    await js.publish(channel_subject("general"), seal_new(ChannelCreated(channel_id="general")).SerializeToString())

    with pytest.raises(ReseedRefused, match="holds an event at sequence 1 that is not the archive's"):
        await reseed_stream(js, archive, "MSG")
    assert (await js.stream_info("MSG")).state.last_seq == 1


@pytest.mark.parametrize(("in_the_log", "refused"), [(0, True), (6, False)])
async def test_storage_refuses_a_log_that_ends_before_its_archive(
    nats_server: NatsTestServer, in_the_log: int, refused: bool
) -> None:
    nc = await nats_server.connect(PLATFORM_USER)
    bus = EventBus(nc, service=PLATFORM_USER, producer="test")
    await bus.ensure_streams(STREAMS)
    for n in range(in_the_log):
        await bus.js.publish(channel_subject(f"c{n}"), b"an event")
    if refused:
        with pytest.raises(RefusedToStart, match="MSG ends at sequence 0, the archive has it up to 6"):
            await refuse_a_log_behind_the_archive(bus, {"MSG": 6})
    else:
        await refuse_a_log_behind_the_archive(bus, {"MSG": 6})

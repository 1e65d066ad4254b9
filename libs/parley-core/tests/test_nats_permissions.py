"""The broker enforces nats_accounts.permissions_for: what each service may publish and read.

These run against a real nats-server started by the ``nats_server`` fixture, so a JetStream
API subject missing from topology shows up here as a timeout or a permissions violation, and a
subject topology grants too widely as a write or a consumer change the server let through.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from pathlib import Path

import nats.js.errors
import pytest
from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.js import api
from nats.js.api import AckPolicy, ConsumerConfig, ConsumerInfo
from parley.messaging.v1.events_pb2 import MessagePosted

from parley_core import nats_accounts, topology
from parley_core.bus import EventBus, ReceivedEvent
from parley_core.envelope import NewEvent, seal
from parley_core.nats_connect import connect_nats
from parley_core.pki import ensure_pki
from parley_core.topology import reads
from parley_testing.nats import NatsTestServer
from parley_testing.refusals import ErrorRecorder, refused

pytestmark = pytest.mark.asyncio  # also runs where asyncio_mode is not auto

TIMEOUT_S = 5  # an int: nats-py annotates some timeouts as int


def _envelope(event_id: str, channel_id: str = "x") -> bytes:
    """A post as messaging appends it (a type MSG's owner writes), known by its event id."""
    event = NewEvent(
        aggregate_type="channel",
        aggregate_id=channel_id,
        payload=MessagePosted(channel_id=channel_id, body=event_id),
        actor="u1",
        event_id=event_id,
    )
    return seal(event, aggregate_version=1, producer="test@0", trace_context={}).SerializeToString()


async def _create_msg_stream(nats_server: NatsTestServer) -> Client:
    messaging = await nats_server.connect("messaging")
    await messaging.jetstream().add_stream(name="MSG", subjects=["parley.msg.>"])
    return messaging


async def _declared_streams(nats_server: NatsTestServer) -> EventBus:
    """Every stream as `parley up` declares it, through the platform identity."""
    platform = EventBus(await nats_server.connect("platform"), service="platform", producer="test@0")
    await platform.ensure_streams(topology.STREAMS)
    return platform


async def _read_back(bus: EventBus, stream: str, subject: str, count: int) -> list[bytes]:
    """What a service's replay (its own named ordered consumer) delivers from `subject`."""
    seen: list[bytes] = []
    done = asyncio.Event()

    async def handler(event: ReceivedEvent) -> None:
        seen.append(event.envelope.event_id.encode())
        if len(seen) == count:
            done.set()

    replay = await bus.replay(stream=stream, filter_subject=subject, handler=handler)
    try:
        await asyncio.wait_for(done.wait(), TIMEOUT_S)
    finally:
        await replay.stop()
    return seen


async def test_messaging_owns_msg_stream(nats_server: NatsTestServer) -> None:
    messaging = EventBus(await _create_msg_stream(nats_server), service="messaging", producer="messaging@test")

    ack = await messaging.js.publish(topology.channel_subject("x"), _envelope("hello"), timeout=TIMEOUT_S)
    assert ack.stream == "MSG"

    assert await _read_back(messaging, "MSG", topology.channel_subject("x"), 1) == [b"hello"]


async def test_publish_outside_own_subjects_is_refused(nats_server: NatsTestServer) -> None:
    platform = await _declared_streams(nats_server)
    errors = ErrorRecorder()
    messaging = await nats_server.connect("messaging", error_cb=errors.callback)

    await messaging.publish(topology.user_subject("1"), b"forged")

    await errors.wait_for("permissions violation", "publish", topology.user_subject("1"))
    # Control: the owner's publish on the same subject is stored, and it is the only one.
    auth = await nats_server.connect("auth")
    await auth.jetstream().publish(topology.user_subject("1"), b"genuine", timeout=TIMEOUT_S)
    msg = await platform.js.get_last_msg("AUTH", topology.user_subject("1"))
    assert (msg.data, msg.seq) == (b"genuine", 1)


async def test_subscribe_outside_own_streams_is_refused(nats_server: NatsTestServer) -> None:
    errors = ErrorRecorder()
    messaging = await nats_server.connect("messaging", error_cb=errors.callback)

    await messaging.subscribe("parley.auth.>")

    await errors.wait_for("permissions violation", "subscription", "parley.auth.>")


async def test_plaintext_connection_is_refused(nats_server: NatsTestServer) -> None:
    """Speak the NATS protocol without TLS: the server must never answer PING with PONG."""
    process = nats_server.process
    reader, writer = await asyncio.open_connection(process.host, process.port)
    try:
        info = json.loads((await asyncio.wait_for(reader.readline(), TIMEOUT_S)).removeprefix(b"INFO "))
        assert info["tls_required"] is True
        connect = {"user": "platform", "pass": nats_server.passwords["platform"], "verbose": False}
        writer.write(b"CONNECT " + json.dumps(connect).encode() + b"\r\nPING\r\n")
        await writer.drain()
        reply = await asyncio.wait_for(reader.read(), 3 * TIMEOUT_S)  # until the server closes it
    finally:
        writer.close()
    assert b"PONG" not in reply


async def test_wrong_password_is_refused(nats_server: NatsTestServer) -> None:
    errors = ErrorRecorder()
    with pytest.raises(NatsError):
        await connect_nats(
            url=nats_server.url,
            user="messaging",
            password="not-" + nats_server.passwords["messaging"],
            ca_cert=nats_server.ca_cert,
            name="test-wrong-password",
            error_cb=errors.callback,
            allow_reconnect=False,
        )
    await errors.wait_for("authorization violation")


async def test_server_with_untrusted_certificate_is_refused(nats_server: NatsTestServer, tmp_path: Path) -> None:
    other_ca = ensure_pki(tmp_path / "other-pki", []).ca_cert
    errors = ErrorRecorder()
    with pytest.raises(OSError, match="CERTIFICATE_VERIFY_FAILED"):
        await connect_nats(
            url=nats_server.url,
            user="messaging",
            password=nats_server.passwords["messaging"],
            ca_cert=other_ca,
            name="test-untrusted",
            error_cb=errors.callback,
            allow_reconnect=False,
        )


async def test_storage_reads_msg_with_durable_pull_consumer(nats_server: NatsTestServer) -> None:
    messaging = await _create_msg_stream(nats_server)
    for n in range(3):
        await messaging.jetstream().publish(topology.channel_subject(f"c{n}"), f"m{n}".encode())
    storage = await nats_server.connect("storage")
    js = storage.jetstream()
    [spec] = [c for c in topology.CONSUMERS if c.stream == "MSG"]

    sub = await js.pull_subscribe(
        topology.CHANNELS_FILTER,
        durable=spec.durable,
        stream=spec.stream,
        config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, max_deliver=spec.max_deliver, ack_wait=spec.ack_wait_s),
    )
    msgs = await sub.fetch(3, timeout=TIMEOUT_S)
    for msg in msgs:
        await msg.ack_sync(timeout=TIMEOUT_S)

    assert [m.data for m in msgs] == [b"m0", b"m1", b"m2"]
    info = await js.consumer_info(spec.stream, spec.durable)
    assert info.num_ack_pending == 0
    assert info.delivered.stream_seq == 3


async def test_gateway_reads_msg_with_its_own_named_ordered_consumer(nats_server: NatsTestServer) -> None:
    messaging = await _create_msg_stream(nats_server)
    gateway = EventBus(await nats_server.connect("gateway"), service="gateway", producer="gateway@test")
    for n in range(3):
        await messaging.jetstream().publish(topology.channel_subject("live"), _envelope(f"m{n}", "live"))

    assert await _read_back(gateway, "MSG", topology.CHANNELS_FILTER, 3) == [b"m0", b"m1", b"m2"]


async def test_an_unnamed_consumer_is_refused_for_it_could_rewrite_any_other(nats_server: NatsTestServer) -> None:
    """The legacy ephemeral create ($JS.API.CONSUMER.CREATE.<stream>) takes the consumer's name
    from the request body, where no permission can see it: with it, the gateway could rewrite
    storage's archive consumer (filter, even durability). No service may use it."""
    await _declared_streams(nats_server)
    errors = ErrorRecorder()
    gateway = await nats_server.connect("gateway", error_cb=errors.callback)

    ordered = gateway.jetstream(timeout=1).subscribe(topology.CHANNELS_FILTER, stream="MSG", ordered_consumer=True)
    # Refused: the request never reaches the API.
    await refused(ordered, errors, nats_accounts.local_subject("gateway", "$JS.API.CONSUMER.CREATE.MSG"))


async def test_only_a_streams_owner_may_delete_from_it_and_storage_only_parked_copies(
    nats_server: NatsTestServer,
) -> None:
    """Storage's stolen password deletes nothing on AUTH or MSG (it records what is due, the owner
    checks and deletes: parley_core.log_deletion); each owner deletes on its own stream only."""
    await _declared_streams(nats_server)
    platform = (await nats_server.connect("platform")).jetstream()
    for n in range(3):
        await platform.publish(topology.channel_subject("x"), f"text {n}".encode())
        await platform.publish(topology.user_subject(f"u{n}"), f"account {n}".encode())
        await platform.publish(topology.parked_subject("storage", "MSG"), f"copy {n}".encode())
    errors = ErrorRecorder()
    storage = await nats_server.connect("storage", error_cb=errors.callback)

    for stream in ("AUTH", "MSG"):
        # Refused: the request never reaches the API.
        delete = storage.jetstream().delete_msg(stream, 1)
        await refused(delete, errors, nats_accounts.local_subject("storage", f"$JS.API.STREAM.MSG.DELETE.{stream}"))
        assert (await platform.stream_info(stream)).state.messages == 3
    assert await storage.jetstream().delete_msg("PARKED", 1)  # a copy of an event that left the log

    for owner, own, other in (("messaging", "MSG", "AUTH"), ("auth", "AUTH", "MSG")):
        owner_errors = ErrorRecorder()
        js = (await nats_server.connect(owner, error_cb=owner_errors.callback)).jetstream(timeout=1)
        assert await js.delete_msg(own, 2)
        delete = js.delete_msg(other, 3)
        await refused(delete, owner_errors, nats_accounts.local_subject(owner, f"$JS.API.STREAM.MSG.DELETE.{other}"))
    assert (await platform.stream_info("MSG")).state.messages == 2
    assert (await platform.stream_info("AUTH")).state.messages == 2


# --- one writer per subject tree, and only one's own consumers: every cell of the matrix ---------


def _every_subject_form() -> list[str]:
    """One subject of each form topology builds, and a made-up one in every stream's tree."""
    t = topology
    return [
        *(spec.subjects[0].removesuffix(">") + "forged" for spec in t.STREAMS),
        t.user_subject("u1"),
        t.username_subject("k1"),
        t.signing_key_subject("key1"),
        t.lockout_subject("k1"),
        "parley.sec.login_succeeded.u1",
        t.channel_subject("c1"),
        t.to_device_subject("u1"),
        t.privacy_subject("u1"),
        t.restore_subject("b1"),
        t.retention_subject("c1"),
        t.kek_subject(),
        t.archive_consumer_subject("MSG"),
        *(t.due_subject(owner, "erasure", "u1") for owner in t.MARKER_OWNERS),
        *(t.reseed_hole_subject(spec.name) for spec in t.STREAMS if spec.owner != "*"),
        t.rollout_subject("r1"),
        t.release_subject("auth"),
        t.advisory_subject("a1"),
        t.trust_root_subject(),
        t.vulnerability_alert_subject("overdue", "a1"),
        "parley.sec.patch.overdue.a1",  # where the registry's alerts went before: auth's audit chain
    ]


def _foreign_subjects(service: str) -> list[str]:
    """Every subject `service` does not own: each other owner's stream trees, and the parking
    and heartbeat subjects of every other service (from topology, no list of its own)."""
    subjects = [s for s in _every_subject_form() if topology.stream_for_subject(s).owner not in (service, "*")]
    for other in topology.SERVICES:
        if other != service:
            subjects.append(topology.parked_subject(other, "MSG"))
            subjects.append(topology.heartbeat_subject(other, "forged"))
    return subjects


async def test_every_service_is_refused_on_every_other_owners_subjects(nats_server: NatsTestServer) -> None:
    platform = await _declared_streams(nats_server)
    for service in topology.SERVICES:
        errors = ErrorRecorder()
        client = await nats_server.connect(service, error_cb=errors.callback)
        refused = _foreign_subjects(service)
        for subject in refused:
            await client.publish(subject, _envelope(f"forged-{service}"))
        await client.flush(timeout=TIMEOUT_S)
        for subject in refused:
            try:
                await errors.wait_for("permissions violation", "publish", f'"{subject}"')
            except TimeoutError:
                pytest.fail(f"{service} was let publish on {subject}")
        # Control: each owner's own tree takes its writes.
        for spec in topology.STREAMS:
            if spec.owner == service:
                ack = await client.jetstream().publish(
                    spec.subjects[0].removesuffix(">") + "own", _envelope(f"own-{service}"), timeout=TIMEOUT_S
                )
                assert ack.stream == spec.name
    for spec in topology.STREAMS:
        expected = 1 if spec.owner in topology.SERVICES else 0  # the owner's control write, nothing forged
        assert (await platform.js.stream_info(spec.name)).state.messages == expected, spec.name


async def _declared_consumers(platform: EventBus) -> dict[tuple[str, str], ConsumerInfo]:
    """Every durable of topology, made by the platform identity as its service would."""
    made = {}
    for spec in topology.CONSUMERS:
        config = ConsumerConfig(
            name=spec.durable,
            durable_name=spec.durable,
            ack_policy=AckPolicy.EXPLICIT,
            filter_subject=spec.filter_subject,
        )
        made[(spec.stream, spec.durable)] = await platform.js.add_consumer(spec.stream, config)
    return made


def _attacks_on(durable: topology.ConsumerSpec) -> list[tuple[str, bytes]]:
    """Every API call that deletes, alters, steals from or inspects another service's durable."""
    stream, name = durable.stream, durable.durable
    rewrite = json.dumps(
        {"stream_name": stream, "config": {"name": name, "durable_name": name, "filter_subject": "parley.nowhere"}}
    ).encode()
    return [
        (f"$JS.API.CONSUMER.DELETE.{stream}.{name}", b""),
        (f"$JS.API.CONSUMER.CREATE.{stream}.{name}", rewrite),
        (f"$JS.API.CONSUMER.CREATE.{stream}.{name}.parley.nowhere", rewrite),
        (f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.{name}", rewrite),
        (f"$JS.API.CONSUMER.PAUSE.{stream}.{name}", b'{"pause_until": "2999-01-01T00:00:00Z"}'),
        (f"$JS.API.CONSUMER.RESET.{stream}.{name}", b'{"seq": 1000000}'),
        (f"$JS.API.CONSUMER.UNPIN.{stream}.{name}", b""),
        (f"$JS.API.CONSUMER.LEADER.STEPDOWN.{stream}.{name}", b""),
        (f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{name}", b'{"batch": 10}'),
        (f"$JS.API.CONSUMER.INFO.{stream}.{name}", b""),
    ]


def _stream_attacks(service: str) -> list[tuple[str, bytes]]:
    """Deleting, purging or re-configuring any stream (its own too), listing consumers,
    and the legacy unnamed consumer create that takes any name from its body."""
    attacks = []
    for spec in topology.STREAMS:
        attacks += [(f"$JS.API.STREAM.DELETE.{spec.name}", b""), (f"$JS.API.STREAM.PURGE.{spec.name}", b"")]
        attacks += [(f"$JS.API.CONSUMER.LIST.{spec.name}", b""), (f"$JS.API.CONSUMER.NAMES.{spec.name}", b"")]
        attacks.append((f"$JS.API.STREAM.UPDATE.{spec.name}", json.dumps({"name": spec.name}).encode()))
        for durable in (c for c in topology.CONSUMERS if c.stream == spec.name and c.service != service):
            legacy = {"stream_name": spec.name, "config": {"name": durable.durable, "filter_subject": "parley.nowhere"}}
            attacks.append((f"$JS.API.CONSUMER.CREATE.{spec.name}", json.dumps(legacy).encode()))
    return attacks


async def test_no_service_may_touch_another_services_consumer_or_any_stream(nats_server: NatsTestServer) -> None:
    platform = await _declared_streams(nats_server)
    for spec in topology.STREAMS:
        await platform.js.publish(spec.subjects[0].removesuffix(">") + "kept", _envelope(f"kept-{spec.name}"))
    before = await _declared_consumers(platform)
    for service in topology.SERVICES:
        errors = ErrorRecorder()
        client = await nats_server.connect(service, error_cb=errors.callback)
        attacks = _stream_attacks(service)
        for durable in (c for c in topology.CONSUMERS if c.service != service):
            attacks += _attacks_on(durable)
        # As the service's own account names them: its JetStream API prefix.
        attacks = [(nats_accounts.local_subject(service, subject), body) for subject, body in attacks]
        for subject, body in dict.fromkeys(attacks):
            await client.publish(subject, body, reply=f"{topology.inbox_prefix(service)}.attack")
        await client.flush(timeout=TIMEOUT_S)
        for subject, _ in dict.fromkeys(attacks):
            try:
                await errors.wait_for("permissions violation", "publish", f'"{subject}"')
            except TimeoutError:
                pytest.fail(f"{service} was let call {subject}")
    for (stream, durable), made in before.items():
        now = await platform.js.consumer_info(stream, durable)
        assert (now.config.durable_name, now.config.filter_subject) == (durable, made.config.filter_subject)
        assert now.config.pause_until is None
    for spec in topology.STREAMS:
        info = await platform.js.stream_info(spec.name)
        assert (info.config.subjects, info.state.messages) == (list(spec.subjects), 1), spec.name


async def test_a_service_makes_inspects_and_deletes_its_own_durable(nats_server: NatsTestServer) -> None:
    platform = await _declared_streams(nats_server)
    await platform.js.publish(topology.channel_subject("c"), _envelope("m1", "c"))
    js = (await nats_server.connect("storage")).jetstream(timeout=TIMEOUT_S)
    [spec] = [c for c in topology.CONSUMERS if c.service == "storage" and c.stream == "MSG"]

    sub = await js.pull_subscribe(spec.filter_subject, durable=spec.durable, stream=spec.stream)
    [msg] = await sub.fetch(1, timeout=TIMEOUT_S)
    await msg.ack_sync(timeout=TIMEOUT_S)
    assert (await js.consumer_info(spec.stream, spec.durable)).ack_floor.stream_seq == 1
    assert await js.delete_consumer(spec.stream, spec.durable)
    with pytest.raises(nats.js.errors.NotFoundError):
        await platform.js.consumer_info(spec.stream, spec.durable)


async def test_an_owner_reads_of_store_only_the_facts_due_to_it(nats_server: NatsTestServer) -> None:
    """Auth reads STORE through one durable with its own filter: not another filter, not the
    stream's state, not a message by sequence, not a consumer of any other shape."""
    platform = await _declared_streams(nats_server)
    await platform.js.publish(topology.due_subject("auth", "erasure", "u1"), _envelope("due-auth"))
    await platform.js.publish(topology.privacy_subject("u1"), _envelope("not-for-auth"))
    errors = ErrorRecorder()
    auth = (await nats_server.connect("auth", error_cb=errors.callback)).jetstream(timeout=1)
    [spec] = [c for c in topology.CONSUMERS if c.service == "auth"]

    sub = await auth.pull_subscribe(spec.filter_subject, durable=spec.durable, stream="STORE")
    [msg] = await sub.fetch(1, timeout=TIMEOUT_S)
    assert msg.subject == topology.due_subject("auth", "erasure", "u1")
    await msg.ack_sync(timeout=TIMEOUT_S)

    wider = ConsumerConfig(name=spec.durable, durable_name=spec.durable, filter_subject="parley.storage.>")
    for call, subject in (
        (auth.add_consumer("STORE", wider), f"$JS.API.CONSUMER.CREATE.STORE.{spec.durable}.parley.storage.>"),
        (auth.stream_info("STORE"), "$JS.API.STREAM.INFO.STORE"),
        (auth.get_msg("STORE", 2), "$JS.API.STREAM.MSG.GET.STORE"),
        (auth.get_last_msg("STORE", topology.privacy_subject("u1"), direct=True), "$JS.API.DIRECT.GET.STORE"),
    ):
        await refused(call, errors, nats_accounts.local_subject("auth", subject))
    assert (await platform.js.consumer_info("STORE", spec.durable)).config.filter_subject == spec.filter_subject


async def test_an_owner_may_not_re_configure_its_own_stream(nats_server: NatsTestServer) -> None:
    """A stream's settings are the platform's. Were its owner let change them, it could make its
    own stream source one it may not read (patch-registry copying every private message of MSG
    into PATCH, where it reads them) or shorten its limits so events go before storage archives
    them. Neither an update nor a create over the existing stream goes through."""
    platform = await _declared_streams(nats_server)
    await platform.js.publish(topology.channel_subject("c1"), _envelope("a private message", "c1"))
    for service in topology.SERVICES:
        errors = ErrorRecorder()
        js = (await nats_server.connect(service, error_cb=errors.callback)).jetstream(timeout=1)
        for spec in (s for s in topology.STREAMS if s.owner == service):
            declared = (await platform.js.stream_info(spec.name)).config
            # A stream it may not read if there is one (storage reads them all).
            unread = (s for s in topology.STREAMS if s.owner not in (service, "*") and not reads(service, s))
            other = next(unread, topology.STREAMS_BY_NAME["MSG"])
            into_own = api.SubjectTransform(src=other.subjects[0], dest=spec.subjects[0].removesuffix(">") + "stolen.>")
            stealing = replace(declared, sources=[api.StreamSource(name=other.name, subject_transforms=[into_own])])
            shortened = replace(declared, max_age=600.0, max_msgs=1)
            for changed in (stealing, shortened):
                # Refused before the API sees it.
                update = js.update_stream(changed)
                await refused(
                    update, errors, nats_accounts.local_subject(service, f"$JS.API.STREAM.UPDATE.{spec.name}")
                )
                with pytest.raises(nats.js.errors.APIError):  # exists with other settings
                    await js.add_stream(changed)
            now = (await platform.js.stream_info(spec.name)).config
            assert (now.sources, now.max_age, now.max_msgs) == (declared.sources, declared.max_age, declared.max_msgs)
    assert (await platform.js.stream_info("MSG")).state.messages == 1
    for spec in topology.STREAMS:
        if spec.name != "MSG":
            assert (await platform.js.stream_info(spec.name)).state.messages == 0, spec.name


async def test_every_heartbeat_reaches_the_registry_and_no_other_service(nats_server: NatsTestServer) -> None:
    """Heartbeats are plain NATS between accounts: each service's account exports its own subjects
    to the registry's, which alone may subscribe to them."""
    registry = await nats_server.connect(topology.HEARTBEAT_READER)
    beats = await registry.subscribe(topology.HEARTBEATS_FILTER)
    await registry.flush(timeout=TIMEOUT_S)
    for service in topology.SERVICES:
        client = await nats_server.connect(service)
        await client.publish(topology.heartbeat_subject(service, "i1"), service.encode())
        await client.flush(timeout=TIMEOUT_S)
        msg = await beats.next_msg(timeout=TIMEOUT_S)
        assert (msg.subject, msg.data) == (topology.heartbeat_subject(service, "i1"), service.encode())
    for service in (s for s in topology.SERVICES if s != topology.HEARTBEAT_READER):
        errors = ErrorRecorder()
        client = await nats_server.connect(service, error_cb=errors.callback)
        await client.subscribe(topology.HEARTBEATS_FILTER)
        await errors.wait_for("permissions violation", "subscription", topology.HEARTBEATS_FILTER)

"""The broker enforces topology.permissions_for: what each service may publish and read.

These run against a real nats-server started by the ``nats_server`` fixture, so a JetStream
API subject missing from topology shows up here as a timeout or a permissions violation.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.js.api import AckPolicy, ConsumerConfig

from parley_core import topology
from parley_core.nats_connect import connect_nats
from parley_core.pki import ensure_pki
from parley_core.testing.nats import NatsTestServer

pytestmark = pytest.mark.asyncio  # also runs where asyncio_mode is not auto

TIMEOUT_S = 5  # an int: nats-py annotates some timeouts as int


class ErrorRecorder:
    """An error_cb that lets a test wait for a specific asynchronous server error."""

    def __init__(self) -> None:
        self.errors: list[Exception] = []
        self._changed = asyncio.Condition()

    async def callback(self, error: Exception) -> None:
        async with self._changed:
            self.errors.append(error)
            self._changed.notify_all()

    async def wait_for(self, *fragments: str) -> Exception:
        """Return the first error whose text contains all ``fragments`` (case-insensitive)."""

        def match() -> Exception | None:
            for error in self.errors:
                text = str(error).lower()
                if all(f.lower() in text for f in fragments):
                    return error
            return None

        async with asyncio.timeout(TIMEOUT_S), self._changed:
            await self._changed.wait_for(lambda: match() is not None)
        found = match()
        assert found is not None
        return found


async def _create_msg_stream(nats_server: NatsTestServer) -> Client:
    messaging = await nats_server.connect("messaging")
    await messaging.jetstream().add_stream(name="MSG", subjects=["parley.msg.>"])
    return messaging


async def test_messaging_owns_msg_stream(nats_server: NatsTestServer) -> None:
    messaging = await _create_msg_stream(nats_server)
    js = messaging.jetstream()

    ack = await js.publish(topology.channel_subject("x"), b"hello", timeout=TIMEOUT_S)
    assert ack.stream == "MSG"

    sub = await js.pull_subscribe(topology.channel_subject("x"), durable="messaging-readback", stream="MSG")
    [msg] = await sub.fetch(1, timeout=TIMEOUT_S)
    assert (msg.subject, msg.data) == (topology.channel_subject("x"), b"hello")
    await msg.ack_sync(timeout=TIMEOUT_S)


async def test_publish_outside_own_subjects_is_refused(nats_server: NatsTestServer) -> None:
    errors = ErrorRecorder()
    messaging = await nats_server.connect("messaging", error_cb=errors.callback)
    platform = await nats_server.connect("platform")
    watcher = await platform.subscribe("parley.auth.>")
    await platform.flush(timeout=TIMEOUT_S)

    await messaging.publish(topology.user_subject("1"), b"forged")

    await errors.wait_for("permissions violation", "publish", topology.user_subject("1"))
    await messaging.flush(timeout=TIMEOUT_S)
    await platform.flush(timeout=TIMEOUT_S)
    assert watcher.pending_msgs == 0
    # Control: the subscription is live, the owner's publish on the same subject arrives.
    auth = await nats_server.connect("auth")
    await auth.publish(topology.user_subject("1"), b"genuine")
    await auth.flush(timeout=TIMEOUT_S)
    msg = await watcher.next_msg(timeout=TIMEOUT_S)
    assert msg.data == b"genuine"


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


async def test_gateway_reads_msg_with_ordered_push_consumer(nats_server: NatsTestServer) -> None:
    messaging = await _create_msg_stream(nats_server)
    gateway = await nats_server.connect("gateway")
    sub = await gateway.jetstream().subscribe(topology.CHANNELS_FILTER, stream="MSG", ordered_consumer=True)

    for n in range(3):
        await messaging.jetstream().publish(topology.channel_subject("live"), f"m{n}".encode())

    received = [(await sub.next_msg(timeout=TIMEOUT_S)).data for _ in range(3)]
    assert received == [b"m0", b"m1", b"m2"]


async def test_storage_may_delete_only_from_the_streams_an_erasure_reaches(nats_server: NatsTestServer) -> None:
    messaging = await _create_msg_stream(nats_server)
    await messaging.jetstream().publish(topology.channel_subject("x"), b"erased author's text")
    platform = await nats_server.connect("platform")
    await platform.jetstream().add_stream(name="SEC", subjects=["parley.sec.>"])
    await platform.jetstream().publish("parley.sec.login.1", b"audit record")
    errors = ErrorRecorder()
    storage = await nats_server.connect("storage", error_cb=errors.callback)

    assert await storage.jetstream().delete_msg("MSG", 1)
    assert (await platform.jetstream().stream_info("MSG")).state.messages == 0
    with pytest.raises((NatsError, TimeoutError)):  # refused: the request never reaches the API
        await storage.jetstream().delete_msg("SEC", 1)
    await errors.wait_for("permissions violation", "publish", "$JS.API.STREAM.MSG.DELETE.SEC")
    assert (await platform.jetstream().stream_info("SEC")).state.messages == 1

"""A reader's credential floods a stream with consumers; the services still make theirs.

Every consumer lives in the streams' account, so nats-server caps them per stream (1,000 on a
stream that sets no max_consumers) for everyone at once, and any reader may create them. A
red-team run filled MSG from the gateway's credential in two seconds, after which no service
could start a replay of it nor storage make its archive consumer again. The platform's consumer
guard (started here as `parley up` starts it) deletes what no service may keep, reports the
flood and quarantines a credential that keeps at it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import nats.aio.msg
import nats.errors
import nats.js.errors
import pytest
import pytest_asyncio
from nats.aio.client import Client

from parley_core import consumer_guard, nats_accounts, topology
from parley_core.bus import EventBus, ReceivedEvent, durable_config
from parley_core.config import Settings
from parley_core.consumer_floods import CONSUMER_FLOOD, UNATTRIBUTED
from parley_core.consumer_guard import ConsumerGuard, ensure_declared_durables
from parley_testing.consumer_flood import FLOOD_ATTEMPTS, Flood, flood_consumers
from parley_testing.nats import NatsTestServer, stream_states
from parley_testing.waiting import eventually

pytestmark = pytest.mark.asyncio

LEGIT_WAIT_S = 30.0  # how long a service's creation may wait for a slot (a bound, not a timing)
ARCHIVE = next(c for c in topology.CONSUMERS if c.durable == "storage-archive-msg")


async def _flooders_left(platform: EventBus) -> int:
    total = 0
    for stream in ("MSG", "AUTH"):
        async for info in _consumers(platform.nc, stream):
            total += "_flood" in info["name"]
    return total


async def _consumers(nc: Client, stream: str) -> AsyncIterator[dict[str, object]]:
    offset = 0
    while True:
        body = json.dumps({"offset": offset}).encode()
        answer = json.loads((await nc.request(f"$JS.API.CONSUMER.LIST.{stream}", body, timeout=5)).data)
        page = answer.get("consumers") or []
        for info in page:
            yield info
        offset += len(page)
        if not page or offset >= answer["total"]:
            return


@dataclass
class Guarded:
    platform: EventBus
    guard: ConsumerGuard


@contextlib.asynccontextmanager
async def _guarded(nats_server: NatsTestServer, *, quarantines: bool = True) -> AsyncIterator[Guarded]:
    """Streams with events, the declared durables and the consumer guard, as `parley up` makes them."""
    platform = EventBus(await nats_server.connect("platform"), service="platform", producer="test@0")
    await platform.ensure_streams(topology.STREAMS)
    for spec in topology.STREAMS:
        await platform.js.publish(spec.subjects[0].removesuffix(">") + "kept", b"kept")
    await ensure_declared_durables(platform.nc)

    async def quarantine(_service: str, _why: str) -> None:
        await nats_server.quarantine(guard.quarantined)

    guard = ConsumerGuard(platform.nc, quarantine=quarantine if quarantines else None)
    await guard.start()
    try:
        yield Guarded(platform, guard)
    finally:
        await guard.stop()


@pytest_asyncio.fixture
async def guarded(nats_server: NatsTestServer) -> AsyncIterator[Guarded]:
    async with _guarded(nats_server) as guarded:
        yield guarded


async def _ignore(_event: ReceivedEvent) -> None:
    return None


async def test_a_readers_flood_leaves_room_for_every_services_consumer(
    nats_server: NatsTestServer, guarded: Guarded
) -> None:
    platform, guard = guarded.platform, guarded.guard
    before = await stream_states(platform.js)
    findings_before, parked_before = await _platform_findings(platform), await _parked_subjects(platform)
    peak = {"MSG": 0, "AUTH": 0}

    async def watch() -> None:
        while True:
            for stream, highest in peak.items():
                with contextlib.suppress(nats.errors.Error):  # a busy server: sampled next time
                    info = await platform.nc.request(f"$JS.API.STREAM.INFO.{stream}", b"", timeout=1)
                    peak[stream] = max(highest, json.loads(info.data)["state"]["consumer_count"])
            await asyncio.sleep(0.02)  # sampling the consumer count for the report, not a wait

    watching = asyncio.create_task(watch())
    try:
        gateway, patch_registry = await nats_server.connect("gateway"), await nats_server.connect("patch-registry")
        loop = asyncio.get_running_loop()
        attack_began = loop.time()
        floods = (Flood(), Flood())
        attack = asyncio.gather(
            flood_consumers(gateway, "gateway", "MSG", flood=floods[0]),
            flood_consumers(patch_registry, "patch-registry", "AUTH", flood=floods[1]),
        )

        # During the flood: messaging's and auth's replays at their start.
        await eventually(lambda: _some(floods[0].made >= 100), "the flood under way", timeout=LEGIT_WAIT_S)
        messaging = EventBus(await nats_server.connect("messaging"), service="messaging", producer="test@0")
        auth = EventBus(await nats_server.connect("auth"), service="auth", producer="test@0")
        during = loop.time()
        msg_replay = await asyncio.wait_for(
            messaging.replay(stream="MSG", filter_subject=topology.MESSAGING_FILTER, handler=_ignore), LEGIT_WAIT_S
        )
        auth_replay = await asyncio.wait_for(
            auth.replay(stream="AUTH", filter_subject=topology.AUTH_FILTER, handler=_ignore), LEGIT_WAIT_S
        )
        replays_took = loop.time() - during
        for replay in (msg_replay, auth_replay):
            assert replay._sub is not None  # its ordered consumer exists: made in spite of the flood
        await attack
        attack_took = loop.time() - attack_began

        # After it: an operator deletes storage's archive consumer, and storage makes it again.
        await platform.js.delete_consumer(ARCHIVE.stream, ARCHIVE.durable)
        storage = (await nats_server.connect("storage")).jetstream()
        after = loop.time()

        async def archive_made() -> bool | None:
            try:
                await storage.add_consumer(ARCHIVE.stream, durable_config(ARCHIVE))
            except nats.js.errors.APIError:
                return None
            return True

        await eventually(archive_made, "storage's archive consumer made again", timeout=LEGIT_WAIT_S)
        archive_took = loop.time() - after

        await eventually(lambda: _none_left(platform), "the flood's consumers deleted", timeout=LEGIT_WAIT_S)
        flood_records = await eventually(lambda: _flood_records(platform, {"gateway", "patch-registry"}), timeout=30)
        assert guard.quarantined == {"gateway", "patch-registry"}, "both kept flooding past QUARANTINE_AFTER"

    finally:
        watching.cancel()

    # Nothing in any stream changed, but the guard's findings on the platform's own stream (one or
    # more per flooded stream, as the deletions came in).
    now = await stream_states(platform.js)
    recorded = ("PARKED", topology.PLATFORM_FINDINGS)
    assert {k: v for k, v in now.items() if k not in recorded} == {k: v for k, v in before.items() if k not in recorded}
    findings = await _platform_findings(platform) - findings_before
    assert findings >= len(flood_records)
    # PARKED holds only the replays' copies of the fixture's raw b"kept" (no event envelope).
    others = await _parked_subjects(platform) - parked_before
    assert others <= {"parley.parked.messaging.MSG.1", "parley.parked.auth.AUTH.1"}
    assert now["PARKED"][0] == before["PARKED"][0] + len(others)
    print(
        f"\nflood: {floods[0].made} made by gateway on MSG, {floods[1].made} by patch-registry on AUTH in "
        f"{attack_took:.1f} s (first refusal: {floods[0].first_refusal!r}); peak consumers MSG {peak['MSG']}, "
        f"AUTH {peak['AUTH']}; replays made during it within {replays_took:.2f} s, the archive consumer after it "
        f"within {archive_took:.2f} s; deleted by the guard: {dict(guard.deleted)}"
    )


async def _some(condition: bool) -> bool | None:
    return True if condition else None


async def _none_left(platform: EventBus) -> bool | None:
    return True if await _flooders_left(platform) == 0 else None


async def _platform_findings(platform: EventBus) -> int:
    """How many records the platform's own findings stream holds (the guard's findings among them)."""
    return (await platform.js.stream_info(topology.PLATFORM_FINDINGS)).state.messages


async def _parked_subjects(platform: EventBus) -> set[str]:
    info = await platform.js.stream_info("PARKED", subjects_filter=">")
    return set(info.state.subjects or {})


async def _flood_records(platform: EventBus, services: set[str]) -> list[dict[str, object]] | None:
    """The guard's findings, once one names each of `services`."""
    records = []
    for stream in ("MSG", "AUTH"):
        subject = topology.platform_finding_subject(CONSUMER_FLOOD, stream)
        try:
            msg = await platform.js.get_last_msg(topology.PLATFORM_FINDINGS, subject)
        except nats.js.errors.NotFoundError:
            continue
        assert (msg.headers or {}).get("Parley-Parked-Kind") == CONSUMER_FLOOD
        records.append(json.loads(msg.data or b"{}"))
    return records if {r["service"] for r in records} >= services else None


async def test_a_quarantined_credential_reads_but_makes_no_consumer_until_lifted(
    nats_server: NatsTestServer, guarded: Guarded
) -> None:
    guard = guarded.guard
    gateway = EventBus(await nats_server.connect("gateway"), service="gateway", producer="test@0")
    flood = await flood_consumers(gateway.nc, "gateway", "MSG")
    assert flood.refused, "the flood was stopped"
    await eventually(lambda: _some(guard.quarantined == {"gateway"}), "the gateway quarantined", timeout=30)

    with pytest.raises(nats.errors.TimeoutError):  # its create is refused by its permissions
        await gateway.js.subscribe(">", stream="AUTH", ordered_consumer=True)
    assert (await gateway.js.stream_info("AUTH")).config.name == "AUTH"  # reading goes on

    await nats_server.quarantine(())  # what `parley consumers lift gateway` has the platform do
    guard.lifted("gateway")
    replay = await asyncio.wait_for(
        gateway.replay(stream="MSG", filter_subject=topology.CHANNELS_FILTER, handler=_ignore), LEGIT_WAIT_S
    )
    await replay.stop()


async def test_the_guards_deletions_alone_keep_a_slot_free_through_a_whole_flood(
    nats_server: NatsTestServer,
) -> None:
    """No quarantine: the gateway's credential asks for consumers as fast as it can, 1,500 times,
    while messaging starts its replay of the same stream."""
    async with _guarded(nats_server, quarantines=False) as guarded:
        gateway = await nats_server.connect("gateway")
        flood = Flood()
        attack = asyncio.create_task(flood_consumers(gateway, "gateway", "MSG", flood=flood))
        await eventually(lambda: _some(flood.made >= 200), "the flood under way", timeout=LEGIT_WAIT_S)
        messaging = EventBus(await nats_server.connect("messaging"), service="messaging", producer="test@0")
        loop = asyncio.get_running_loop()
        during = loop.time()
        replay = await asyncio.wait_for(
            messaging.replay(stream="MSG", filter_subject=topology.MESSAGING_FILTER, handler=_ignore), LEGIT_WAIT_S
        )
        replay_took = loop.time() - during
        await attack
        await eventually(lambda: _none_left(guarded.platform), "the flood's consumers deleted", timeout=LEGIT_WAIT_S)
        assert await eventually(lambda: _flood_records(guarded.platform, {"gateway"}), timeout=30)
        await replay.stop()
        print(
            f"\nunquarantined flood: {flood.made} made of {FLOOD_ATTEMPTS} asked, {flood.refused} refused "
            f"({flood.first_refusal or 'none'}); the replay was made within {replay_took:.2f} s; "
            f"deleted by the guard: {sum(guarded.guard.deleted.values())}"
        )


async def test_a_flood_of_parked_junk_does_not_hide_the_guards_finding(
    nats_server: NatsTestServer, guarded: Guarded
) -> None:
    """A stolen gateway credential first fills PARKED to its bound (it may park on its own
    subtree), then floods MSG with consumers: the guard's finding still lands, on the platform's
    own stream, which no service may write."""
    platform = guarded.platform
    limit = 20
    await platform.ensure_streams(Settings(parked_max_msgs=limit).streams)  # PARKED bounded small
    gateway = await nats_server.connect("gateway")
    refused = 0
    for n in range(2 * limit):
        try:
            await gateway.jetstream().publish(f"{topology.parked_subject('gateway', 'MSG')}.{n}", b"junk")
        except nats.js.errors.APIError:
            refused += 1
    assert refused > 0, "PARKED is full"

    made = await flood_consumers(gateway, "gateway", "MSG")
    assert made.made > 0
    [record] = await eventually(lambda: _flood_records(platform, {"gateway"}), "the guard's finding", timeout=30)
    assert record["service"] == "gateway"
    assert record["stream"] == "MSG"
    assert (await platform.js.stream_info("PARKED")).state.messages == limit  # still full: nothing went there
    with pytest.raises(nats.errors.Error):  # and the gateway cannot write a finding of its own
        await gateway.jetstream().publish(
            topology.platform_finding_subject(CONSUMER_FLOOD, "AUTH"), b"forged", timeout=2
        )


async def test_a_replay_waits_for_a_free_consumer_slot(
    nats_server: NatsTestServer, caplog: pytest.LogCaptureFixture
) -> None:
    """No guard: a stream full of consumers, a replay starting, then one slot freed (as the guard frees
    them): the replay is made instead of failing its service's start."""
    platform = EventBus(await nats_server.connect("platform"), service="platform", producer="test@0")
    await platform.ensure_streams(topology.STREAMS)
    filled = await flood_consumers(platform.nc, topology.PLATFORM_USER, "MSG")
    assert filled.first_refusal == "maximum consumers limit reached"
    messaging = EventBus(await nats_server.connect("messaging"), service="messaging", producer="test@0")
    starting = asyncio.create_task(
        messaging.replay(stream="MSG", filter_subject=topology.MESSAGING_FILTER, handler=_ignore)
    )
    await eventually(
        lambda: _some("no free consumer slot on the stream; retrying" in caplog.text), "a refused try", timeout=30
    )
    await platform.js.delete_consumer("MSG", "platform_flood0")
    replay = await asyncio.wait_for(starting, LEGIT_WAIT_S)
    await replay.stop()


async def test_a_sweep_deletes_what_no_guard_saw_made_and_keeps_what_it_did(
    nats_server: NatsTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Consumers made before the guard started (a flood while `parley up` was down) go at its first
    sweep, declared durables stay; a replay the guard saw made survives every later sweep."""
    monkeypatch.setattr(consumer_guard, "ADVISORY_GRACE_S", 0.0)  # judge at once what no advisory named
    platform = EventBus(await nats_server.connect("platform"), service="platform", producer="test@0")
    await platform.ensure_streams(topology.STREAMS)
    await ensure_declared_durables(platform.nc)
    before = await flood_consumers(await nats_server.connect("gateway"), "gateway", "MSG", attempts=40)
    assert before.made == 40
    guard = ConsumerGuard(platform.nc, sweep_every_s=3600)
    await guard.start()  # its first sweep
    try:
        await eventually(lambda: _none_left(platform), "the unseen flood deleted", timeout=LEGIT_WAIT_S)
        assert not guard.findings  # made while no guard watched: no one to blame
        messaging = EventBus(await nats_server.connect("messaging"), service="messaging", producer="test@0")
        replay = await messaging.replay(stream="MSG", filter_subject=topology.MESSAGING_FILTER, handler=_ignore)
        await eventually(lambda: _some(guard.kept("messaging", "MSG") == 1), "the replay judged", timeout=30)
        await guard.sweep()
        await guard.sweep()
        names = [info["name"] async for info in _consumers(platform.nc, "MSG")]
        assert replay._sub is not None
        assert [n for n in names if n.startswith("messaging_")] == [(await replay._sub.consumer_info()).name]
        declared = {c.durable for c in (*topology.CONSUMERS, *topology.SIEM_CONSUMERS) if c.stream == "MSG"}
        assert declared <= set(names)
        await replay.stop()
    finally:
        await guard.stop()


async def test_consumers_made_while_the_guard_watched_that_no_advisory_named_are_a_finding(
    nats_server: NatsTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Red-team F4: a flood of refused 1 MB API calls can cost the guard its advisories (the server
    cuts its connection off as a slow consumer); what its sweep then finds, made since it started,
    is recorded as an unattributed finding, not only deleted."""
    monkeypatch.setattr(consumer_guard, "ADVISORY_GRACE_S", 0.0)
    async with _guarded(nats_server) as guarded:
        await guarded.guard._subs[0].unsubscribe()  # the audit advisories lost from here on
        flood = await flood_consumers(await nats_server.connect("gateway"), "gateway", "MSG", attempts=5)
        assert flood.made == 5
        await guarded.guard.sweep()

        await eventually(lambda: _none_left(guarded.platform), "the unnamed flood deleted", timeout=LEGIT_WAIT_S)
        [record] = await eventually(lambda: _flood_records(guarded.platform, {UNATTRIBUTED}), "the finding recorded")
        assert (record["stream"], record["deleted"]) == ("MSG", 5)
        assert guarded.guard.quarantined == set()  # no one to quarantine


async def test_a_stream_writer_cannot_frame_another_service_with_delivered_advisories(
    nats_server: NatsTestServer, guarded: Guarded
) -> None:
    """The red team's frame: patch-registry stores 120 audit advisories naming messaging's account
    on its own stream, then makes a push consumer delivering them onto `$JS.EVENT.ADVISORY.API`,
    which the platform imports. The guard quarantined messaging; now it takes only what the server
    published (no reply subject, no headers), and the forger's consumer is its own violation."""
    platform, guard = guarded.platform, guarded.guard
    on_advisory: list[nats.aio.msg.Msg] = []

    async def keep(msg: nats.aio.msg.Msg) -> None:
        on_advisory.append(msg)

    await platform.nc.subscribe(consumer_guard.API_AUDIT, cb=keep)
    patch_registry = await nats_server.connect("patch-registry")
    js = patch_registry.jetstream(prefix=nats_accounts.SERVICE_JS_API)
    forged = 120
    for i in range(forged):
        made = {"stream_name": "MSG", "name": f"f{i}", "config": {"name": f"f{i}", "durable_name": f"f{i}"}}
        advisory = {
            "type": "io.nats.jetstream.advisory.v1.api_audit",
            "subject": f"$JS.API.CONSUMER.CREATE.MSG.f{i}",
            "request": "{}",
            "response": json.dumps(made),
            "client": {"acc": nats_accounts.account_of("messaging")},
        }
        await js.publish("parley.patch.redteam.frame", json.dumps(advisory).encode())
    push = {
        "name": "fwd1",
        "ack_policy": "none",
        "inactive_threshold": 5_000_000_000,
        "deliver_subject": consumer_guard.API_AUDIT,
        "filter_subject": "parley.patch.redteam.frame",
    }
    answer = await patch_registry.request(
        f"{nats_accounts.SERVICE_JS_API}.CONSUMER.CREATE.PATCH.fwd1",
        json.dumps({"stream_name": "PATCH", "config": push}).encode(),
        timeout=5,
    )
    assert json.loads(answer.data).get("name") == "fwd1", answer.data  # the server lets it be made

    # The forger is found out, its consumer deleted; messaging is neither quarantined nor blamed.
    await eventually(lambda: _some(any(f.service == "patch-registry" for f in guard.findings)), timeout=30)
    gone = json.loads((await platform.nc.request("$JS.API.CONSUMER.INFO.PATCH.fwd1", b"", timeout=5)).data)
    assert gone.get("error", {}).get("err_code") == 10014, gone
    assert "messaging" not in guard.quarantined
    assert not [f for f in guard.findings if f.service == "messaging"]

    # What told them apart, as this nats-server sends it: a delivery has a $JS.ACK reply, an advisory none.
    delivered = [m for m in on_advisory if b"CONSUMER.CREATE.MSG.f" in m.data]
    real = [m for m in on_advisory if b"CONSUMER.CREATE.PATCH.fwd1" in m.data]
    assert delivered, "the push consumer delivered forgeries before the guard deleted it"
    assert all(m.reply.startswith("$JS.ACK.") for m in delivered)
    assert real
    assert all(not m.reply and not m.headers for m in real)
    # ... and names its call before its request, so the guard skips other calls' bodies unparsed.
    head = consumer_guard._AUDIT_SUBJECT.search(real[0].data[: consumer_guard._AUDIT_HEAD])
    assert head is not None
    assert head.group(1) == b"$JS.API.CONSUMER.CREATE.PATCH.fwd1"
    assert guard.forged >= len(delivered)
    print(f"\nframe: {len(delivered)} forgeries delivered, {guard.forged} refused by the guard; {dict(guard.deleted)}")

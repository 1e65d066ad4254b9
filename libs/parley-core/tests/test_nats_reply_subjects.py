"""No service credential can make the server write for it: the reply-subject and deliver-subject holes.

nats-server checks a client's permissions on the subject it publishes, not on the reply subject
it names, and JetStream sends its answers (a direct get's stored message, a pull consumer's next
message, any API answer) to that reply subject; a push consumer sends its messages to whatever
deliver subject its creator chose. Were a stream listening there, it would store what the server
sent on the asker's behalf: any event copied onto any other owner's subject, or a purge request
made of an answer. Each service is its own NATS account (natsconf), so an answer goes back into
the asker's account, where no stream listens, and a push consumer delivers inside the streams'
account, where no client is. Every service credential tries each way onto every other owner's
stream, and the victims must hold exactly what they held.
"""

from __future__ import annotations

import json

import pytest
from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.js.api import AckPolicy, ConsumerConfig

from parley_core import nats_accounts, topology
from parley_core.bus import EventBus
from parley_testing.nats import NatsTestServer, stream_states

pytestmark = pytest.mark.asyncio

TIMEOUT_S = 5


def _kept_subject(spec: topology.StreamSpec) -> str:
    return spec.subjects[0].removesuffix(">") + "kept"


def _api(service: str, rest: str) -> str:
    """A JetStream API subject as this service's connection reaches it."""
    return f"{nats_accounts.js_api_prefix(service)}.{rest}"


def _victims(service: str) -> list[tuple[topology.StreamSpec, str]]:
    """Every stream the service does not own, with a subject of it the service may not write."""
    victims = []
    for spec in topology.STREAMS:
        if spec.owner == service:
            continue
        subject = topology.parked_subject(next(s for s in topology.SERVICES if s != service), "MSG")
        victims.append((spec, subject if spec.owner == "*" else spec.subjects[0].removesuffix(">") + "forged"))
    return victims


def _reply_targets(service: str) -> list[str]:
    """Where an answer must never do harm: each victim's subjects, and purging or deleting it
    (through the JetStream API subject as the service names it and as the server does)."""
    targets = []
    for spec, subject in _victims(service):
        targets.append(subject)
        for call in (f"STREAM.PURGE.{spec.name}", f"STREAM.DELETE.{spec.name}"):
            targets += [_api(service, call), f"$JS.API.{call}"]
    for spec in topology.STREAMS:  # its own streams: an answer is no append, purging is the platform's
        if spec.owner == service:
            targets.append(spec.subjects[0].removesuffix(">") + "answered")
            targets += [_api(service, f"STREAM.PURGE.{spec.name}"), f"$JS.API.STREAM.PURGE.{spec.name}"]
    for durable in _durables():  # and deleting another service's durable consumer
        if durable.service != service:
            call = f"CONSUMER.DELETE.{durable.stream}.{durable.durable}"
            targets += [_api(service, call), f"$JS.API.{call}"]
    return list(dict.fromkeys(targets))


def _durables() -> tuple[topology.ConsumerSpec, ...]:
    return (*topology.CONSUMERS, *topology.SIEM_CONSUMERS)


async def _platform_with_events(nats_server: NatsTestServer) -> EventBus:
    """Every stream and durable as `parley up` and the services make them, one event on each
    stream (and one due fact for each owner that reads STORE through its durable)."""
    platform = EventBus(await nats_server.connect("platform"), service="platform", producer="test@0")
    await platform.ensure_streams(topology.STREAMS)
    for spec in topology.STREAMS:
        await platform.js.publish(_kept_subject(spec), b"kept " + spec.name.encode())
    for owner in topology.MARKER_OWNERS:
        await platform.js.publish(topology.due_subject(owner, "erasure", "u1"), b"due")
    for spec in _durables():
        config = ConsumerConfig(
            name=spec.durable,
            durable_name=spec.durable,
            ack_policy=AckPolicy.EXPLICIT,
            filter_subject=spec.filter_subject,
        )
        await platform.js.add_consumer(spec.stream, config)
    return platform


async def _answered(client: Client, subject: str, body: bytes) -> None:
    """The same request answered on the asker's own inbox: the server handled what came before."""
    try:
        await client.request(subject, body, timeout=TIMEOUT_S)
    except NoRespondersError:
        pytest.fail(f"no one answers {subject} any more: its stream or consumer was deleted")


async def _assert_untouched(
    platform: EventBus, before: dict[str, tuple[int, int, int]]
) -> dict[str, tuple[int, int, int]]:
    """Each stream takes one more append after whatever was sent to it, so anything sent before
    is stored by now: each must hold what it held, and that one append."""
    for spec in topology.STREAMS:
        await platform.js.publish(spec.subjects[0].removesuffix(">") + "sentinel", b"after the attacks")
    after = await stream_states(platform.js)
    for spec in topology.STREAMS:
        messages, first, last = before[spec.name]
        assert after[spec.name] == (messages + 1, first, last + 1), (
            f"{spec.name}: {before[spec.name]} -> {after[spec.name]}"
        )
    return after


async def test_no_answer_lands_on_another_owners_stream(nats_server: NatsTestServer) -> None:
    """Direct gets (single and batched) and pulls from the service's own durables, answered onto
    every other owner's subjects and onto the API subjects that purge or delete a stream."""
    platform = await _platform_with_events(nats_server)
    before = await stream_states(platform.js)
    for service in topology.SERVICES:
        client = await nats_server.connect(service)
        targets = _reply_targets(service)
        for spec in (s for s in topology.STREAMS if topology.reads(service, s)):
            get = _api(service, f"DIRECT.GET.{spec.name}")
            body = json.dumps({"seq": before[spec.name][1]}).encode()
            for target in targets:
                await client.publish(get, body, reply=target)
            batch = json.dumps({"seq": 1, "batch": 10, "next_by_subj": ">"}).encode()
            await client.publish(get, batch, reply=targets[0])
            await _answered(client, get, body)
        for durable in (c for c in _durables() if c.service == service):
            pull = _api(service, f"CONSUMER.MSG.NEXT.{durable.stream}.{durable.durable}")
            for target in targets:
                await client.publish(pull, json.dumps({"batch": 5, "no_wait": True}).encode(), reply=target)
            await _answered(client, pull, json.dumps({"batch": 1, "no_wait": True}).encode())
    await _assert_untouched(platform, before)
    for durable in _durables():
        assert (await platform.js.consumer_info(durable.stream, durable.durable)).name == durable.durable


async def test_no_push_consumer_delivers_onto_a_stream(nats_server: NatsTestServer) -> None:
    """A push consumer whose deliver subject is another owner's subject, made by every service on
    every stream it reads, while an operator watches the streams' subjects (`nats sub`): no
    interest where the consumer lives, so it delivers nothing, and no stream stores anything."""
    platform = await _platform_with_events(nats_server)
    before = await stream_states(platform.js)
    victims = {subject for service in topology.SERVICES for _, subject in _victims(service)}
    watching = [await platform.nc.subscribe(subject) for subject in sorted(victims)]
    await platform.nc.flush(timeout=TIMEOUT_S)
    made = []
    for service in topology.SERVICES:
        client = await nats_server.connect(service)
        for spec in (s for s in topology.STREAMS if topology.reads(service, s)):
            for n, (_, victim) in enumerate(_victims(service)):
                name = f"{service.replace('-', '_')}_push{n}"
                config = {"name": name, "deliver_subject": victim, "ack_policy": "none", "filter_subject": ">"}
                create = _api(service, f"CONSUMER.CREATE.{spec.name}.{name}")
                answer = await client.request(
                    create, json.dumps({"stream_name": spec.name, "config": config}).encode(), timeout=TIMEOUT_S
                )
                if "error" not in json.loads(answer.data):
                    made.append((service, spec.name, name))
    assert made  # the services may make consumers: it is where they deliver that must be harmless
    for service, stream, name in made:
        info = await platform.js.consumer_info(stream, name)
        assert not info.push_bound, f"{service}'s push consumer {name} on {stream} has somewhere to deliver"
        assert info.delivered.consumer_seq == 0, f"{service}'s push consumer {name} on {stream} delivered"
    await _assert_untouched(platform, before)
    for sub in watching:
        await sub.unsubscribe()

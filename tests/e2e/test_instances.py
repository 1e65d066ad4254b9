"""`parley up --instances messaging=2,gateway=2`: several instances of a service on one host,
behind the same addresses, and one channel written through both messaging instances at once.

Each messaging instance is called directly (as a gateway instance calls it: the gateway's
certificate and the user's token; one send per call, or several in one PostMessages call as a
gateway batches them), so both are known to decide on the same channel at the same moments; the
same idempotency key sent to both at once must store one message.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest
from parley.messaging.v1 import messaging_pb2, messaging_pb2_grpc

from parley_core.grpc_channel import secure_channel
from parley_core.net import free_port
from parley_core.pki import ensure_pki
from parley_testing.platform import RunningPlatform
from parley_testing.traffic import history_count
from parley_testing.waiting import eventually, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

SENDERS_PER_INSTANCE = 3
MESSAGES_PER_SENDER = 15
SHARED_KEYS = 15  # sent to both instances at once
BATCH = 5  # sends per PostMessages call of a batching sender


@pytest.fixture(scope="module")
def scaled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningPlatform]:
    running = RunningPlatform(
        data_dir=tmp_path_factory.mktemp("instances") / "data",
        env={"PARLEY_REGISTRATION": "open"},
        up_args=("--gateway-port", str(free_port()), "--instances", "messaging=2,gateway=2"),
    )
    yield from running.served()


def test_parley_up_runs_the_instances_asked_for(scaled: RunningPlatform) -> None:
    counts = {name: len(scaled.service(name)["instances"]) for name in ("messaging", "gateway", "auth", "storage")}  # type: ignore[arg-type]
    assert counts == {"messaging": 2, "gateway": 2, "auth": 1, "storage": 1}

    def both_in_the_fleet() -> bool:  # each instance's first heartbeat reaches the registry in turn
        fleet = scaled.cli("fleet").stdout
        return sum(line.startswith("messaging ") and "SERVING" in line for line in fleet.splitlines()) == 2

    wait_until(both_in_the_fleet, timeout=60, what="`parley fleet` to show both messaging instances serving")


def test_a_service_that_runs_once_is_refused_with_the_ones_that_scale(tmp_path_factory: pytest.TempPathFactory) -> None:
    refused = RunningPlatform(data_dir=tmp_path_factory.mktemp("refused") / "data").cli(
        "up", "--instances", "storage=2", check=False
    )
    assert refused.returncode == 2
    assert "storage runs once per platform; several instances: gateway, messaging, auth" in refused.stderr


async def test_one_channel_written_through_both_messaging_instances_keeps_one_order(scaled: RunningPlatform) -> None:
    client = scaled.client()
    await client.register("dana", "a-long-passphrase")
    await client.login("dana", "a-long-passphrase")
    channel = await client.create_channel("both-instances")
    metadata = (("authorization", f"Bearer {client.access_token}"),)

    pki = ensure_pki(scaled.data_dir / "pki", ["gateway"])
    addresses = [str(i["address"]) for i in scaled.service("messaging")["instances"]]  # type: ignore[attr-defined]
    channels = [secure_channel(pki, identity="gateway", address=a, peer="messaging") for a in addresses]
    stubs = [messaging_pb2_grpc.MessagingServiceStub(c) for c in channels]

    async def send(stub: messaging_pb2_grpc.MessagingServiceStub, body: str, key: str) -> int:
        request = messaging_pb2.PostMessageRequest(channel_id=channel.channel_id, body=body, idempotency_key=key)
        message = await stub.PostMessage(request, metadata=metadata, timeout=30)
        return int(message.channel_seq)

    async def send_batch(stub: messaging_pb2_grpc.MessagingServiceStub, keyed: list[tuple[str, str]]) -> list[int]:
        items = [
            messaging_pb2.PostItem(
                request=messaging_pb2.PostMessageRequest(channel_id=channel.channel_id, body=body, idempotency_key=key),
                authorization=metadata[0][1],
            )
            for body, key in keyed
        ]
        outcomes = (await stub.PostMessages(messaging_pb2.PostMessagesRequest(items=items), timeout=30)).outcomes
        assert [o.details for o in outcomes if o.code] == []
        return [int(o.message.channel_seq) for o in outcomes]

    async def sender(stub: messaging_pb2_grpc.MessagingServiceStub, name: str, batched: bool) -> dict[str, int]:
        seqs: dict[str, int] = {}
        for start in range(0, MESSAGES_PER_SENDER, BATCH if batched else 1):
            keyed = [(f"{name} {n}", uuid.uuid4().hex) for n in range(start, start + (BATCH if batched else 1))]
            if batched:
                seqs.update(zip([body for body, _ in keyed], await send_batch(stub, keyed), strict=True))
            else:
                [(body, key)] = keyed
                seqs[body] = await send(stub, body, key)
        return seqs

    async def shared(n: int) -> list[tuple[str, list[int]]]:
        body, key = f"shared {n}", uuid.uuid4().hex
        return [(body, list(await asyncio.gather(*(send(stub, body, key) for stub in stubs))))]

    async def shared_batch() -> list[tuple[str, list[int]]]:
        keyed = [(f"shared batch {n}", uuid.uuid4().hex) for n in range(SHARED_KEYS)]
        first, second = await asyncio.gather(*(send_batch(stub, keyed) for stub in stubs))
        return [(body, [first[i], second[i]]) for i, (body, _) in enumerate(keyed)]

    try:
        results = await asyncio.gather(
            *(
                sender(stub, f"i{i}s{s}", batched=s == 0)
                for i, stub in enumerate(stubs)
                for s in range(SENDERS_PER_INSTANCE)
            ),
            *(shared(n) for n in range(SHARED_KEYS)),
            shared_batch(),
        )
    finally:
        for grpc_channel in channels:
            await grpc_channel.close()

    acknowledged: dict[str, int] = {}
    for result in results:
        if isinstance(result, dict):
            acknowledged.update(result)
            continue
        for body, seqs in result:
            assert seqs[0] == seqs[1], f"{body!r} stored twice: {seqs}"  # one key, one message
            acknowledged[body] = seqs[0]
    total = 2 * SENDERS_PER_INSTANCE * MESSAGES_PER_SENDER + 2 * SHARED_KEYS
    assert len(acknowledged) == total
    assert sorted(acknowledged.values()) == list(range(1, total + 1)), "numbers are one gap-free sequence"

    async def archived() -> int | None:
        count = await history_count(client, channel.channel_id)
        return count if count >= total else None

    assert await eventually(archived, "every acknowledged message in history", 60) == total
    history: dict[str, int] = {}
    while page := (await client.history(channel.channel_id, after_seq=max(history.values(), default=0))).messages:
        history.update({m.body: m.channel_seq for m in page})
    await client.close()
    assert history == acknowledged  # every acknowledged message, at the number its sender was told

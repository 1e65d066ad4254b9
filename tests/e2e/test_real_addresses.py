"""Clients at several addresses, through the client address `parley up` gives: the gateway sees
each one's real address, so what one address does costs no other address anything.

Each "address" is a SourceRelay whose connections leave from 127.0.0.N (a gRPC client cannot
choose its own). The platform runs with small limits so each is reached in a few calls, and
lockouts that last an hour, so none runs out while the test looks:

- wrong passwords from a stranger's address lock only the stranger's tries: the owner's right
  password from her address still logs her in;
- one address's flood of calls spends its own budget, not a bystander's;
- registrations are budgeted per address;
- every security event carries the address the call came from.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Iterator

import grpc
import pytest
import pytest_asyncio
from parley.auth.v1 import auth_pb2
from parley.gateway.v1 import gateway_pb2_grpc

from parley_testing.platform import RunningPlatform, platform_in
from parley_testing.relay import SourceRelay
from parley_testing.security import platform_security_events
from parley_testing.stack import PASSWORD
from parley_testing.statuses import code_of

pytestmark = pytest.mark.e2e

LOCKOUT_THRESHOLD = 3
REGISTRATIONS_PER_ADDRESS = 2
CALLS_PER_ADDRESS = 30  # the burst; at 0.01 calls/s it does not refill during the test
STRANGER, OWNER, FLOODER, BYSTANDER, REGISTRAR, NEWCOMER = (f"127.0.0.{n}" for n in range(2, 8))


def source(host: str) -> str:
    """How the gateway names a client at `host` (gRPC's peer form, without the port)."""
    return f"ipv4:{host}"


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningPlatform]:
    running = platform_in(
        tmp_path_factory.mktemp("edge"),
        PARLEY_AUTH_LOCKOUT_THRESHOLD=str(LOCKOUT_THRESHOLD),
        PARLEY_AUTH_LOCKOUT_BASE_SECONDS="3600",
        PARLEY_AUTH_REGISTRATIONS_PER_SOURCE_PER_HOUR=str(REGISTRATIONS_PER_ADDRESS),
        PARLEY_GATEWAY_SOURCE_RATE="0.01",
        PARLEY_GATEWAY_SOURCE_BURST=str(CALLS_PER_ADDRESS),
    )
    yield from running.served()


@pytest_asyncio.fixture
async def at(edge: RunningPlatform) -> AsyncIterator[dict[str, gateway_pb2_grpc.GatewayAsyncStub]]:
    """A gateway stub per client address."""
    ca = edge.ca_cert.read_bytes()
    relays, channels, stubs = [], [], {}
    for host in (STRANGER, OWNER, FLOODER, BYSTANDER, REGISTRAR, NEWCOMER):
        relay = await SourceRelay(edge.gateway_address, host).start()
        channel = grpc.aio.secure_channel(
            relay.address,
            grpc.ssl_channel_credentials(root_certificates=ca),
            options=[("grpc.ssl_target_name_override", "gateway")],
        )
        relays.append(relay)
        channels.append(channel)
        stubs[host] = gateway_pb2_grpc.GatewayStub(channel)
    try:
        yield stubs
    finally:
        for channel in channels:
            await channel.close()
        for relay in relays:
            await relay.stop()


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def register(stub: gateway_pb2_grpc.GatewayAsyncStub, username: str) -> Awaitable[auth_pb2.UserName]:
    return stub.Register(auth_pb2.RegisterRequest(username=username, password=PASSWORD), timeout=30)


def login(stub: gateway_pb2_grpc.GatewayAsyncStub, username: str, password: str = PASSWORD) -> Awaitable[object]:
    return stub.Login(auth_pb2.LoginRequest(username=username, password=password), timeout=30)


async def test_each_address_spends_only_its_own_lockouts_budgets_and_registrations(
    edge: RunningPlatform, at: dict[str, gateway_pb2_grpc.GatewayAsyncStub]
) -> None:
    victim, bystander = unique("victim"), unique("bystander")
    victim_id = (await register(at[OWNER], victim)).user_id
    await register(at[BYSTANDER], bystander)

    # A stranger guesses the victim's password until his tries are locked...
    for _ in range(LOCKOUT_THRESHOLD):
        code, _ = await code_of(login(at[STRANGER], victim, "not-her-password"))
        assert code == grpc.StatusCode.UNAUTHENTICATED
    code, message = await code_of(login(at[STRANGER], victim))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, message  # even the right password, from there
    # ...and the victim, at her own address, logs in as usual.
    assert (await code_of(login(at[OWNER], victim)))[0] == grpc.StatusCode.OK

    # One address floods until its budget is spent; a bystander elsewhere is still served.
    flood = auth_pb2.LoginRequest(username="x")  # refused at once by auth (no password): cheap
    for _ in range(CALLS_PER_ADDRESS):
        assert (await code_of(at[FLOODER].Login(flood, timeout=30)))[0] == grpc.StatusCode.INVALID_ARGUMENT
    code, message = await code_of(at[FLOODER].Login(flood, timeout=30))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "too many requests from this address" in message
    assert (await code_of(login(at[BYSTANDER], bystander)))[0] == grpc.StatusCode.OK

    # Registrations: each address has its own few an hour.
    for _ in range(REGISTRATIONS_PER_ADDRESS):
        await register(at[REGISTRAR], unique("reg"))
    code, message = await code_of(register(at[REGISTRAR], unique("reg")))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "too many registrations from this address" in message
    assert (await code_of(register(at[NEWCOMER], unique("newcomer"))))[0] == grpc.StatusCode.OK

    # The security events name the address each call came from.
    failed = [e for e in await platform_security_events(edge, "login_failed") if e.username == victim]
    assert [e.source for e in failed] == [source(STRANGER)] * LOCKOUT_THRESHOLD
    locks = [e for e in await platform_security_events(edge, "lockout") if e.username == victim]
    assert [e.source for e in locks] == [source(STRANGER)]
    logins = [e for e in await platform_security_events(edge, "login_succeeded") if e.user_id == victim_id]
    assert [e.source for e in logins] == [source(OWNER)]
    registered = {e.username: e.source for e in await platform_security_events(edge, "account_registered")}
    assert registered[victim] == source(OWNER)
    assert registered[bystander] == source(BYSTANDER)
    assert list(registered.values()).count(source(REGISTRAR)) == REGISTRATIONS_PER_ADDRESS


def test_the_gateway_listens_on_the_client_address_itself(edge: RunningPlatform) -> None:
    """No proxy in between: the client address is the gateway instance's own listener."""
    gateway = edge.service("gateway")
    instances = gateway["instances"]
    assert isinstance(instances, list)
    assert len(instances) == 1
    assert gateway["address"] == edge.gateway_address
    log = edge.log("gateway")
    assert f'"shared": "{edge.gateway_address}"' in log


async def test_an_administrator_sees_and_ends_a_lockout(
    edge: RunningPlatform, at: dict[str, gateway_pb2_grpc.GatewayAsyncStub]
) -> None:
    """`parley admin show` says an account is locked out and until when; `parley admin unlock`
    ends it (every address), audited; an account without failures is not "unlocked"."""
    victim = unique("locked")
    await register(at[OWNER], victim)
    assert "LOCKED" not in edge.cli("admin", "show", victim).stdout
    refused = edge.cli("admin", "unlock", victim, check=False)
    assert refused.returncode == 1
    assert "not locked out (FAILED_PRECONDITION)" in refused.stderr

    for _ in range(LOCKOUT_THRESHOLD):
        await code_of(login(at[STRANGER], victim, "not-her-password"))
    assert (await code_of(login(at[STRANGER], victim)))[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
    shown = edge.cli("admin", "show", victim).stdout
    assert "LOCKED OUT from 1 address(es) until " in shown
    assert f"`parley admin unlock {victim}` ends it" in shown

    unlocked = edge.cli("admin", "unlock", victim, "--reason", "ticket 42").stdout
    assert "LOCKED" not in unlocked
    assert f"{victim} may log in again from every address" in unlocked
    assert (await code_of(login(at[STRANGER], victim)))[0] == grpc.StatusCode.OK
    [record] = [e for e in await platform_security_events(edge, "lockout_cleared") if e.username == victim]
    assert record.actor == "platform"
    assert "ticket 42" in record.detail

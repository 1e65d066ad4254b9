"""argon2id parameters, transparent re-hash, and a login storm that must not stall other calls."""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid

from argon2 import PasswordHasher, extract_parameters
from parley.auth.v1 import auth_pb2, auth_pb2_grpc
from parley.auth.v1.events_pb2 import UserRegistered

from parley_auth.usernames import username_key
from parley_core.bus import EventBus
from parley_core.envelope import NewEvent
from parley_core.topology import username_subject
from parley_testing.nats import NatsTestServer
from parley_testing.stack import PASSWORD, TIMEOUT_S, Stack, bearer
from parley_testing.waiting import until

STORM = 24


async def test_an_old_hash_is_replaced_at_login_with_owasp_parameters(
    stack: Stack, nats_server: NatsTestServer
) -> None:
    # An account from before the parameters were raised: argon2id with 8 MiB and one pass.
    weak = PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1).hash(PASSWORD)
    user_id = uuid.uuid4().hex
    bus = EventBus(await nats_server.connect("auth"), service="auth", producer="auth@old")
    event = NewEvent(
        aggregate_type="user",
        aggregate_id=user_id,
        payload=UserRegistered(user_id=user_id, username="olduser", password_hash=weak, role="member"),
        actor=f"user:{user_id}",
    )
    await bus.append(username_subject(username_key("olduser")), event, aggregate_version=1, expected_last_subject_seq=0)
    auth = stack.app("auth")
    await until(lambda: auth.accounts.find("olduser") is not None, "auth to apply the old account", TIMEOUT_S)

    await stack.login("olduser")
    rehashed = auth.accounts.find("olduser").password_hash
    assert rehashed != weak
    parameters = extract_parameters(rehashed)
    assert parameters.type.name == "ID"
    assert parameters.memory_cost >= 19 * 1024
    assert parameters.time_cost >= 2
    await stack.login("olduser")  # the new hash verifies the same password


async def test_a_login_storm_does_not_stall_other_calls(stack: Stack) -> None:
    await stack.create_user("storm", "member")
    token = bearer((await stack.login("storm")).access_token)
    auth = auth_pb2_grpc.AuthServiceStub(stack.internal("auth"))

    async def probe() -> float:
        started = time.perf_counter()
        await auth.ListSessions(auth_pb2.ListSessionsRequest(), metadata=token, timeout=TIMEOUT_S)
        return time.perf_counter() - started

    # At as many accounts: one account's logins are checked one at a time (check_gates.py).
    crowd = [f"storm{n}" for n in range(STORM)]
    for username in crowd:
        await stack.create_user(username, "member")
    idle = [await probe() for _ in range(10)]
    storm = asyncio.gather(*(stack.login(username) for username in crowd), return_exceptions=True)
    during: list[float] = []
    while not storm.done():
        during.append(await probe())
    results = await storm
    assert [r for r in results if isinstance(r, BaseException)] == []
    assert during, "the storm ended before a single probe"
    print(
        f"\n[login storm] {STORM} concurrent argon2id logins: ListSessions median "
        f"{statistics.median(idle) * 1000:.1f} ms idle, {statistics.median(during) * 1000:.1f} ms during "
        f"(max {max(during) * 1000:.1f} ms, {len(during)} probes)"
    )

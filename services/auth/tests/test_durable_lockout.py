"""Failed-login counters live on the AUTH stream: a restart does not reset them and a second
auth instance on the same bus counts the first one's failures (and the other way round)."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from parley.auth.v1 import auth_pb2, auth_pb2_grpc

from parley_auth.check_gates import BUSY
from parley_auth.lockout import LockoutPolicy
from parley_testing.nats import NatsTestServer
from parley_testing.stack import PASSWORD, TIMEOUT_S, Running, Stack, start_service
from parley_testing.waiting import until

pytestmark = pytest.mark.asyncio

# Long enough that no lockout runs out while the test looks at it.
POLICY = LockoutPolicy(threshold=3, base_s=3600.0, max_s=3600.0)
SOURCE = "ipv4:203.0.113.7"


async def login(stub: auth_pb2_grpc.AuthServiceAsyncStub, username: str, password: str) -> grpc.StatusCode:
    request = auth_pb2.LoginRequest(username=username, password=password)
    try:
        await stub.Login(request, metadata=(("x-parley-source", SOURCE),), timeout=TIMEOUT_S)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def another_auth(stack: Stack, nats_server: NatsTestServer) -> Running:
    started = await start_service(stack, nats_server, "auth", registration="open")
    started.app.app.lockouts.pair_policy = POLICY
    return started


async def test_failures_at_two_instances_add_up_and_survive_a_restart(
    stack: Stack, nats_server: NatsTestServer
) -> None:
    await stack.create_user("victim", "member")
    await stack.create_user("bystander", "member")
    first = stack.app("auth")
    first.lockouts.pair_policy = POLICY
    second = await another_auth(stack, nats_server)
    try:
        stubs = [stack.auth_as_gateway(), stack.auth_as_gateway(second.port)]
        # The failures alternate between the instances; neither alone saw the threshold.
        for attempt in range(POLICY.threshold):
            assert await login(stubs[attempt % 2], "victim", "wrong-password-here") == grpc.StatusCode.UNAUTHENTICATED
        for app in (first, second.app.app):
            await until(lambda app=app: app.lockouts.check("victim", SOURCE) is not None, "the lockout at both")
        for stub in stubs:
            # Even the right password waits, at either instance.
            assert await login(stub, "victim", PASSWORD) == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        await second.shutdown()

    # A fresh instance (what a restart is) replays the counts before it answers.
    restarted = await another_auth(stack, nats_server)
    try:
        stub = stack.auth_as_gateway(restarted.port)
        assert await login(stub, "victim", PASSWORD) == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert await login(stub, "bystander", PASSWORD) == grpc.StatusCode.OK
    finally:
        await restarted.shutdown()


async def test_a_successful_login_clears_the_account_counter_everywhere(
    stack: Stack, nats_server: NatsTestServer
) -> None:
    await stack.create_user("forgetful", "member")
    first = stack.app("auth")
    first.lockouts.pair_policy = POLICY
    stub = stack.auth_as_gateway()
    for _ in range(POLICY.threshold - 1):
        assert await login(stub, "forgetful", "wrong-password-here") == grpc.StatusCode.UNAUTHENTICATED
    assert await login(stub, "forgetful", PASSWORD) == grpc.StatusCode.OK

    restarted = await another_auth(stack, nats_server)
    try:
        # Had the success not been recorded, this one failure would reach the threshold.
        other = stack.auth_as_gateway(restarted.port)
        assert await login(other, "forgetful", "wrong-password-here") == grpc.StatusCode.UNAUTHENTICATED
        assert await login(other, "forgetful", PASSWORD) == grpc.StatusCode.OK
    finally:
        await restarted.shutdown()


BACKSTOP = LockoutPolicy(threshold=4, base_s=3600.0, max_s=3600.0, forget_after_s=3600.0)


async def test_a_new_address_per_guess_still_meets_the_account_backstop(
    stack: Stack, nats_server: NatsTestServer
) -> None:
    """The gateway's certificate may name any address: a guesser claiming a fresh one per try
    never reaches a pair's threshold, but the account's count over every address stops him."""
    await stack.create_user("sprayed", "member")
    await stack.create_user("neighbour", "member")
    first = stack.app("auth")
    first.lockouts.pair_policy = POLICY
    first.lockouts.account_policy = BACKSTOP
    stub = stack.auth_as_gateway()

    async def attempt(password: str, source: str, username: str = "sprayed") -> tuple[grpc.StatusCode, str]:
        request = auth_pb2.LoginRequest(username=username, password=password)
        try:
            await stub.Login(request, metadata=(("x-parley-source", source),), timeout=TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            return exc.code(), exc.details() or ""
        return grpc.StatusCode.OK, ""

    for n in range(BACKSTOP.threshold):
        code, _ = await attempt("wrong-password-here", f"ipv4:203.0.113.{n + 1}")
        assert code == grpc.StatusCode.UNAUTHENTICATED
    # The next guess, and even the right password, from yet another address, waits.
    held_back = (grpc.StatusCode.RESOURCE_EXHAUSTED, "too many failed logins for this account from many addresses")
    code, details = await attempt("wrong-password-here", "ipv4:198.51.100.1")
    assert (code, details[: len(held_back[1])]) == held_back
    code, details = await attempt(PASSWORD, "ipv4:198.51.100.2")
    assert (code, details[: len(held_back[1])]) == held_back
    # Only this account: the addresses used are not locked for anyone else.
    assert await attempt(PASSWORD, "ipv4:203.0.113.1", username="neighbour") == (grpc.StatusCode.OK, "")

    restarted = await another_auth(stack, nats_server)
    restarted.app.app.lockouts.account_policy = BACKSTOP
    try:
        # Counted on the AUTH stream: a fresh instance replays the backstop too.
        other = stack.auth_as_gateway(restarted.port)
        request = auth_pb2.LoginRequest(username="sprayed", password=PASSWORD)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await other.Login(request, metadata=(("x-parley-source", "ipv4:192.0.2.200"),), timeout=TIMEOUT_S)
        assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        await restarted.shutdown()


async def test_a_burst_of_simultaneous_guesses_checks_none_past_the_backstop(stack: Stack) -> None:
    """Guesses sent at the same moment from fresh addresses, the right password last: the lockout
    is checked before the password and a failure counts once on the stream, so without one check
    at a time per account they would all pass the check. None past the backstop is checked, and
    the right password waits with the rest."""
    await stack.create_user("stormed", "member")
    first = stack.app("auth")
    first.lockouts.pair_policy = POLICY
    first.lockouts.account_policy = BACKSTOP
    stub = stack.auth_as_gateway()

    async def attempt(password: str, source: str) -> tuple[grpc.StatusCode, str]:
        request = auth_pb2.LoginRequest(username="stormed", password=password)
        try:
            await stub.Login(request, metadata=(("x-parley-source", source),), timeout=TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            return exc.code(), exc.details() or ""
        return grpc.StatusCode.OK, ""

    guesses = [attempt("wrong-password-here", f"ipv4:203.0.113.{n + 1}") for n in range(100)]
    answers = await asyncio.gather(*guesses, attempt(PASSWORD, "ipv4:198.51.100.9"))
    codes = [code for code, _ in answers]
    # One instance, one check at a time: the failure that reaches the backstop is counted before
    # the next check, so no more wrong passwords are checked than the backstop allows.
    assert 0 < codes.count(grpc.StatusCode.UNAUTHENTICATED) <= BACKSTOP.threshold
    assert set(codes) == {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.RESOURCE_EXHAUSTED}
    refusals = {details.split(";")[0] for code, details in answers if code is grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert refusals <= {BUSY.split(";")[0], "too many failed logins for this account from many addresses"}

    # Whatever the burst left unchecked, the backstop now holds the right password back too.
    await until(lambda: first.lockouts.check("stormed", "ipv4:192.0.2.9") is not None, "the backstop to lock")
    code, details = await attempt(PASSWORD, "ipv4:192.0.2.9")
    assert (code, details.split(";")[0]) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "too many failed logins for this account from many addresses",
    )

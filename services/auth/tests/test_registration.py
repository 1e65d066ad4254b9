"""Open self-registration without user enumeration: one answer for every unavailable name, a
budget per client address. (Equal timing comes from hashing on every path; not timed here.)"""

from __future__ import annotations

import grpc
import pytest
from parley.auth.v1 import auth_pb2, auth_pb2_grpc

from parley_auth.usernames import USERNAME_UNAVAILABLE
from parley_testing.stack import PASSWORD, TIMEOUT_S, Stack, bearer

pytestmark = pytest.mark.asyncio


async def register(stub: auth_pb2_grpc.AuthServiceAsyncStub, username: str, source: str) -> tuple[grpc.StatusCode, str]:
    request = auth_pb2.RegisterRequest(username=username, password=PASSWORD)
    try:
        await stub.Register(request, metadata=(("x-parley-source", source),), timeout=TIMEOUT_S)
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


async def test_every_unavailable_name_gets_the_same_answer(stack: Stack) -> None:
    auth = stack.auth_as_gateway()
    assert (await register(auth, "dave", "ipv4:198.51.100.1"))[0] == grpc.StatusCode.OK
    answers = {
        name: await register(auth, name, "ipv4:198.51.100.2")
        # taken, the same in capitals, in full-width letters (NFKC), and reserved names
        for name in ("dave", "DAVE", "\uff44\uff41\uff56\uff45", "admin", "Security")
    }
    assert set(answers.values()) == {(grpc.StatusCode.ALREADY_EXISTS, USERNAME_UNAVAILABLE)}, answers
    # A reserved name is refused to strangers only: an administrator may still create it.
    assert (await stack.create_user("admin", "admin")).username == "admin"
    assert await register(auth, "admin", "ipv4:198.51.100.3") == answers["dave"]


async def test_registrations_are_budgeted_per_client_address(stack: Stack) -> None:
    auth = stack.auth_as_gateway()
    budget = stack.app("auth").settings.registrations_per_source_per_hour
    # Taken and free names spend the same budget: probing names costs as much as registering.
    assert (await register(auth, "erin", "ipv4:198.51.100.9"))[0] == grpc.StatusCode.OK
    for attempt in range(budget - 1):
        code, _ = await register(auth, "erin" if attempt % 2 else f"erin{attempt}", "ipv4:198.51.100.9")
        assert code in (grpc.StatusCode.OK, grpc.StatusCode.ALREADY_EXISTS)
    code, message = await register(auth, "fresh-name", "ipv4:198.51.100.9")
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "too many registrations from this address" in message
    # Another address is not affected; a rejected password or name syntax spends nothing.
    assert (await register(auth, "fresh-name", "ipv4:198.51.100.10"))[0] == grpc.StatusCode.OK
    assert (await register(auth, "x", "ipv4:198.51.100.9"))[0] == grpc.StatusCode.INVALID_ARGUMENT


async def test_the_roll_out_probers_names_are_the_platform_identitys_alone(stack: Stack) -> None:
    """The detector takes an account the platform identity made under a prober's name for the
    platform's own (parley_core.synthetic); nobody else may take such a name."""
    auth = stack.auth_as_gateway()
    reserved = "usernames beginning with 'canary-prober' are reserved for the platform's roll-out probers"
    for name in ("canary-prober", "canary-prober-0123456789", "Canary-Prober-x"):
        code, message = await register(auth, name, "ipv4:198.51.100.20")
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert reserved in message
    # Not an owner with a token either: only the platform identity (the node agent) over mTLS.
    await stack.create_user("chief", "owner")
    chief = bearer((await stack.login("chief")).access_token)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await auth.CreateUser(
            auth_pb2.CreateUserRequest(username="canary-prober-x", password=PASSWORD), metadata=chief, timeout=TIMEOUT_S
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reserved in (refused.value.details() or "")
    assert (await stack.create_user("canary-prober-x", "member")).username == "canary-prober-x"
    # A name that only starts alike is anyone's.
    assert await register(auth, "canary-probes", "ipv4:198.51.100.21") == (grpc.StatusCode.OK, "")

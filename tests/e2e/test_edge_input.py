"""Issue 13, item 5: whatever a client sends, the gateway answers with a documented status.

Reaction limits and the definition of an emoji; numbers and times out of range; bytes that are
no protobuf at all; and a property-based run (Hypothesis) that sends random and extreme values,
and random bytes, to every gateway RPC named in the service descriptor, asserting that only
documented status codes come back and that a bystander is served all along.

The run is short in `make test` (PARLEY_FUZZ_PROFILE=quick, the default); `make fuzz` runs the
`thorough` profile, many more examples per RPC.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from parley.gateway.v1 import gateway_pb2
from parley.messaging.v1 import messaging_pb2

from parley_client import ParleyClient, ParleyError
from parley_testing.platform import RunningPlatform, gateway_budgets, platform_in
from parley_testing.stack import PASSWORD
from parley_testing.waiting import eventually

pytestmark = pytest.mark.e2e

TIMEOUT_S = 30.0
CALL_TIMEOUT_S = 15.0
EMOJI_PER_MESSAGE = 3
REACTIONS_PER_USER = 2
EDITS_PER_MESSAGE = 3
GATEWAY = gateway_pb2.DESCRIPTOR.services_by_name["Gateway"]
# What docs/security.md promises a client may see for a request it made up: never INTERNAL or UNKNOWN.
DOCUMENTED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}

for profile, examples in (("quick", 12), ("thorough", 400)):
    settings.register_profile(
        profile,
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
PROFILE = os.environ.get("PARLEY_FUZZ_PROFILE", "quick")


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningPlatform]:
    """Small reaction and edit limits, and budgets the fuzzing user does not run out of."""
    running = platform_in(
        tmp_path_factory.mktemp("platform"),
        PARLEY_MESSAGING_MAX_EMOJI_PER_MESSAGE=str(EMOJI_PER_MESSAGE),
        PARLEY_MESSAGING_MAX_REACTIONS_PER_USER=str(REACTIONS_PER_USER),
        PARLEY_MESSAGING_MAX_EDITS_PER_MESSAGE=str(EDITS_PER_MESSAGE),
        **gateway_budgets(100_000),
        PARLEY_TRACE_EXPORTER="none",
    )
    yield from running.served()


async def new_user(platform: RunningPlatform, prefix: str) -> ParleyClient:
    return await named_user(platform, f"{prefix}{uuid.uuid4().hex[:8]}")


async def named_user(platform: RunningPlatform, name: str) -> ParleyClient:
    client = platform.client()
    await client.register(name, PASSWORD)
    await client.login(name, PASSWORD)
    return client


async def fresh_token(platform: RunningPlatform, refresh_token: str) -> str:
    """A current access token of one of the fuzzing user's sessions. By refresh, not by login: the
    runs of Login and Register pile up failed logins from this address, and a lockout would follow."""
    async with platform.client() as client:
        client.refresh_token = refresh_token
        return (await client.refresh()).access_token


# --- reactions ---------------------------------------------------------------------------------


async def test_reactions_are_one_emoji_each_and_capped_per_message_and_person(platform: RunningPlatform) -> None:
    alice, bob = await new_user(platform, "alice"), await new_user(platform, "bob")
    cid = (await alice.create_channel("reactions")).channel_id
    await bob.join_channel(cid)
    seq = (await alice.send(cid, "react to this")).channel_seq

    for text in ("+1", "👍👍", "🏻", "x" * 40):
        with pytest.raises(ParleyError) as refused:
            await bob.react(cid, seq, text)
        assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "one emoji from Unicode's emoji list" in refused.value.message
    assert [r.emoji for r in (await bob.react(cid, seq, "❤")).reactions] == ["❤️"]  # stored fully qualified

    await bob.react(cid, seq, "👍")  # bob's second: his cap
    with pytest.raises(ParleyError) as too_many_mine:
        await bob.react(cid, seq, "🎉")
    assert too_many_mine.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"with {REACTIONS_PER_USER} emoji" in too_many_mine.value.message

    await alice.react(cid, seq, "🎉")  # the message's third distinct emoji: its cap
    with pytest.raises(ParleyError) as too_many_kinds:
        await alice.react(cid, seq, "👀")
    assert too_many_kinds.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"already has {EMOJI_PER_MESSAGE} different emoji" in too_many_kinds.value.message
    await alice.react(cid, seq, "👍")  # one of those that are there is still fine

    await bob.react(cid, seq, "❤️", remove=True)  # taking one back makes room
    final = await bob.react(cid, seq, "🎉")
    assert {r.emoji: len(r.user_ids) for r in final.reactions} == {"👍": 2, "🎉": 2}
    for client in (alice, bob):
        await client.close()


async def test_edits_are_capped_so_moderators_always_see_the_first_text(platform: RunningPlatform) -> None:
    """Every earlier text of a message is kept for its moderators and returned in one answer;
    past the cap a sender cannot bury the first text under edits (400 long ones once made the
    answer bigger than any client takes)."""
    alice, mallory = await new_user(platform, "alice"), await new_user(platform, "mallory")
    cid = (await alice.create_channel("moderated")).channel_id
    await mallory.join_channel(cid)
    seq = (await mallory.send(cid, "the first, abusive, text")).channel_seq
    for n in range(EDITS_PER_MESSAGE):
        await mallory.edit(cid, seq, f"harmless {n}")
    with pytest.raises(ParleyError) as capped:
        await mallory.edit(cid, seq, "one more")
    assert capped.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"edited {EDITS_PER_MESSAGE} times, the most a message may be" in capped.value.message
    versions = await alice.message_versions(cid, seq)  # alice created the channel: its moderator
    assert "the first, abusive, text" in versions
    assert "one more" not in versions
    await mallory.send(cid, "one more")  # a new message is fine
    for client in (alice, mallory):
        await client.close()


async def test_a_thread_longer_than_any_answer_is_read_page_by_page(platform: RunningPlatform) -> None:
    """400 replies of 4000 three-byte characters (4.8 MB, more than the 4 MiB a gRPC client takes
    in one answer) once made the thread unreadable for everyone; it is read in pages."""
    alice, bob = await new_user(platform, "alice"), await new_user(platform, "bob")
    cid = (await alice.create_channel("long-thread")).channel_id
    await bob.join_channel(cid)
    root = (await alice.send(cid, "a root")).channel_seq
    for n in range(400):
        await alice.reply(cid, root, f"{n:03d}" + "\u20ac" * 3990)
    thread = await bob.thread(cid, root)
    assert [m.body[:3] for m in thread.replies] == [f"{n:03d}" for n in range(400)]
    request = messaging_pb2.ListThreadRequest(channel_id=cid, root_seq=root, limit=500)
    page = await bob._call(bob._stub.ListThread, request)
    assert page.has_more
    assert 0 < len(page.replies) < 400
    assert page.ByteSize() <= 2 * 1024 * 1024 + 64 * 1024  # the page's budget, and the root
    with pytest.raises(ParleyError) as too_many:
        await bob._call(bob._stub.ListThread, messaging_pb2.ListThreadRequest(channel_id=cid, root_seq=root, limit=501))
    assert too_many.value.code == grpc.StatusCode.INVALID_ARGUMENT
    for client in (alice, bob):
        await client.close()


# --- ranges and undecodable requests -----------------------------------------------------------


async def test_numbers_and_times_out_of_range_are_invalid_arguments(platform: RunningPlatform) -> None:
    alice = await new_user(platform, "ranges")
    cid = (await alice.create_channel("ranges")).channel_id
    for page, field in [
        (alice.history(cid, after_seq=2**63), "after_seq"),
        (alice.history(cid, before_seq=2**64 - 1), "before_seq"),
        (alice.history(cid, after_time=datetime(9999, 12, 31, tzinfo=UTC)), "after_time"),
        (alice.history(cid, before_time=datetime(1969, 12, 31, tzinfo=UTC)), "before_time"),
    ]:
        with pytest.raises(ParleyError) as refused:
            await page
        assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert refused.value.message.startswith(f"{field} must be")
    for call in (
        alice.react(cid, 2**63, "👍"),
        alice.edit(cid, 2**64 - 1, "x"),
        alice.thread(cid, 2**63),
    ):
        with pytest.raises(ParleyError) as refused:
            await call
        assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    # The largest number that fits is a message that does not exist, not an error of ours.
    with pytest.raises(ParleyError) as missing:
        await alice.thread(cid, 2**63 - 1)
    assert missing.value.code == grpc.StatusCode.NOT_FOUND
    await alice.close()


async def test_bytes_that_are_no_request_are_an_invalid_argument_in_plain_words(platform: RunningPlatform) -> None:
    alice = await new_user(platform, "bytes")
    async with platform.gateway_channel() as channel:
        for method in ("GetHistory", "Login", "SendMessage"):
            raw = channel.unary_unary(f"/{GATEWAY.full_name}/{method}")
            metadata = (("authorization", f"Bearer {alice.access_token}"),)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await raw(b"\x0a\x02\xff\xfe", metadata=metadata, timeout=TIMEOUT_S)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert refused.value.details() == (
                f"the request is not a valid protobuf message of the type /{GATEWAY.full_name}/{method} takes"
            )
    await alice.close()


# --- the property-based run --------------------------------------------------------------------


@dataclass
class Target:
    """What the fuzzing user knows, so random requests also hit real channels, messages and people."""

    address: str
    ca_cert: bytes
    fuzzer_id: str
    sessions: dict[str, str]  # a refresh token per gateway method: one run's Logout ends no other's
    bystander_session: str  # the bystander's refresh token
    bystander_channel: str
    strings: dict[str, list[str]]  # known values of fields whose name starts with the key


async def make_target(platform: RunningPlatform) -> Target:
    fuzzer_name = f"fuzzer{uuid.uuid4().hex[:8]}"
    fuzzer, bystander = await named_user(platform, fuzzer_name), await new_user(platform, "bystander")
    cid = (await fuzzer.create_channel("fuzzed")).channel_id
    for i in range(3):
        await fuzzer.send(cid, f"message {i}")
    other = (await bystander.create_channel("bystander's")).channel_id
    ids = [fuzzer.user_id or "", bystander.user_id or ""]
    strings = {
        "channel_id": [cid, other],
        "user_id": ids,
        "emoji": ["👍", "❤", "🎉", "👀", "+1"],
        "role": ["moderator", "member", "owner", "admin", "security-auditor"],
        "body": ["hello", "x" * 4000],
        "name": ["general", "x" * 64],
        "username": [fuzzer_name, "nobody"],
    }
    target = Target(
        address=platform.gateway_address,
        ca_cert=platform.ca_cert.read_bytes(),
        fuzzer_id=fuzzer.user_id or "",
        sessions={},
        bystander_session=bystander.refresh_token or "",
        bystander_channel=other,
        strings=strings,
    )
    for method in GATEWAY.methods:
        target.sessions[method.name] = (await fuzzer.login(fuzzer_name, PASSWORD)).refresh_token
    await fuzzer.close()
    await bystander.close()
    return target


@pytest.fixture(scope="module")
def target(platform: RunningPlatform) -> Target:
    return asyncio.run(make_target(platform))


@pytest.fixture(scope="module")
def gateway(target: Target) -> Iterator[grpc.Channel]:
    credentials = grpc.ssl_channel_credentials(root_certificates=target.ca_cert)
    channel = grpc.secure_channel(target.address, credentials, options=[("grpc.ssl_target_name_override", "gateway")])
    try:
        yield channel
    finally:
        channel.close()


UINTS = [0, 1, 2, 3, 2**31 - 1, 2**32 - 1, 2**53, 2**63 - 1, 2**63, 2**64 - 1]
INTEGER_RANGES = {
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
}
TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
ODD = ["", " ", "\x00", "\u202e\u0007", "a.b", "*", ">", "a" * 300, "💥", "../x", "%s%n", "\n"]


def integers(field: FieldDescriptor) -> st.SearchStrategy[int]:
    """Mostly small numbers (real message numbers, limits), else extremes or anything at all."""
    low, high = INTEGER_RANGES[field.type]
    extremes = [v for v in [*UINTS, -1, low, high] if low <= v <= high]
    small = st.integers(0, 6)
    return st.one_of(small, small, st.sampled_from(extremes), st.integers(low, high))


def timestamps() -> st.SearchStrategy[Timestamp]:
    seconds = st.sampled_from([0, 1, 253402300799, -62135596800, 9_223_372_035, 9_223_372_037, -1, 2**63 - 1, -(2**63)])
    nanos = st.sampled_from([0, 1, 999_999_999, 1_000_000_000, -1, 2**31 - 1, -(2**31)])
    return st.builds(lambda s, n: Timestamp(seconds=s, nanos=n), st.one_of(seconds, st.integers(0, 2**34)), nanos)


def strings(target: Target, name: str) -> st.SearchStrategy[str]:
    """Mostly values the platform knows (a real channel, a real user), else odd or random text."""
    known = next((v for k, v in target.strings.items() if k and name.startswith(k)), None)
    odd = st.sampled_from(ODD)
    if known is None:
        return st.one_of(TEXT, TEXT, odd, st.just("x" * 70_000))
    return st.one_of(st.sampled_from(known), st.sampled_from(known), odd, TEXT)


def scalar(target: Target, field: FieldDescriptor) -> st.SearchStrategy[Any]:
    if field.type == FieldDescriptor.TYPE_STRING:
        return strings(target, field.name)
    if field.type == FieldDescriptor.TYPE_BYTES:
        return st.one_of(st.binary(max_size=64), st.just(b"\x00" * 70_000))
    if field.type == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if field.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        # real times and small numbers, else the values arithmetic trips over (inf, nan, huge)
        return st.one_of(st.floats(0, 2e9), st.sampled_from([-1.0, 1e300, float("inf"), float("nan")]))
    return integers(field)


def messages(target: Target, descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    """Requests of this type with each field unset, known, random or extreme."""
    if descriptor.full_name == Timestamp.DESCRIPTOR.full_name:
        return timestamps()
    cls = GetMessageClass(descriptor)
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for field in descriptor.fields:
        nested = field.message_type
        if nested is not None and nested.GetOptions().map_entry:
            value = st.dictionaries(
                strings(target, field.name), scalar(target, nested.fields_by_name["value"]), max_size=3
            )
        elif nested is not None:
            if depth >= 2:
                continue
            one = messages(target, nested, depth + 1)
            value = st.lists(one, max_size=3) if field.is_repeated else one
        else:
            one = scalar(target, field)
            value = st.lists(one, max_size=3) if field.is_repeated else one
        fields[field.name] = st.one_of(st.none(), value)

    def build(values: dict[str, Any]) -> Message:
        message = cls()
        for name, value in values.items():
            if value is None:
                continue
            field = descriptor.fields_by_name[name]
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                getattr(message, name).update(value)
            elif field.is_repeated:
                getattr(message, name).extend(value)
            elif field.message_type is not None:
                getattr(message, name).CopyFrom(value)
            else:
                setattr(message, name, value)
        return message

    return st.fixed_dictionaries(fields).map(build)


def call(gateway: grpc.Channel, method: str, payload: bytes, token: str) -> grpc.StatusCode:
    """The status a raw request gets; a live stream counts from its first event."""
    path = f"/{GATEWAY.full_name}/{method}"
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    try:
        if GATEWAY.methods_by_name[method].server_streaming:
            stream = gateway.unary_stream(path)(payload, metadata=metadata, timeout=CALL_TIMEOUT_S)
            try:
                next(stream)
            finally:
                stream.cancel()
        else:
            gateway.unary_unary(path)(payload, metadata=metadata, timeout=CALL_TIMEOUT_S)
    except grpc.RpcError as exc:
        code: grpc.StatusCode = exc.code()  # type: ignore[attr-defined]
        details: str = exc.details() or ""  # type: ignore[attr-defined]
        assert code in DOCUMENTED, f"{method} answered {code.name}: {details}"
        assert "Traceback" not in details
        return code
    return grpc.StatusCode.OK


async def bystander_is_served(platform: RunningPlatform, target: Target) -> None:
    """Send in the bystander's channel and read it back from history: gateway, auth, messaging
    and storage all still serve someone who had nothing to do with the run."""
    client = platform.client()
    client.refresh_token = target.bystander_session
    await client.refresh()
    target.bystander_session = client.refresh_token or ""
    text = f"still here {uuid.uuid4().hex[:6]}"
    sent = await client.send(target.bystander_channel, text)

    async def archived() -> bool | None:
        page = await client.history(target.bystander_channel, after_seq=sent.channel_seq - 1)
        return True if any(m.body == text for m in page.messages) else None

    await eventually(archived, "the bystander's message in history", TIMEOUT_S)
    await client.close()


@pytest.mark.parametrize("method", [m.name for m in GATEWAY.methods])
def test_random_requests_get_only_documented_answers(
    platform: RunningPlatform, target: Target, gateway: grpc.Channel, method: str
) -> None:
    descriptor = GATEWAY.methods_by_name[method]
    token = asyncio.run(fresh_token(platform, target.sessions[method]))
    tokens = st.one_of(st.just(token), st.sampled_from(["", "not-a-token", token[:-4] + "AAAA"]))

    @settings(settings.get_profile(PROFILE))
    @given(request=messages(target, descriptor.input_type), token=tokens)
    def random_values(request: Message, token: str) -> None:
        # The fuzzing user erasing their own data is allowed, and would only end the run early.
        assume(not (method == "EraseUserData" and getattr(request, "user_id", "") == target.fuzzer_id))
        call(gateway, method, request.SerializeToString(), token)

    @settings(settings.get_profile(PROFILE))
    @given(payload=st.one_of(st.binary(max_size=256), messages(target, descriptor.input_type).map(truncated)))
    def random_bytes(payload: bytes) -> None:
        call(gateway, method, payload, token)

    random_values()
    random_bytes()
    asyncio.run(bystander_is_served(platform, target))


def truncated(message: Message) -> bytes:
    """A valid request cut short: the bytes a broken client or proxy sends."""
    raw = message.SerializeToString()
    return raw[: len(raw) // 2] + b"\xff"

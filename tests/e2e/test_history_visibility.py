"""Issue 13: a member who may not see a message gets no byte of it through any gateway call.

A newcomer of a hide-history channel (a moderator, so no role stands in the way, and the author
of a message from an earlier membership) calls every gateway RPC that returns message content
about each earlier message; the answer (response bytes or error details) never holds an earlier
body, edit, reply, sender name or sender id. The same call about a message sent after the join
succeeds, so it is the visibility rule, not some other check, that refuses. The list of RPCs
comes from the gateway's service descriptor: a new RPC whose response can carry a message fails
`test_every_rpc_that_returns_message_content_has_a_probe` until it gets a row here.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
import pytest
from google.protobuf.descriptor import Descriptor, MethodDescriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from parley.gateway.v1 import gateway_pb2
from parley.messaging.v1 import messaging_pb2
from parley.storage.v1 import storage_pb2

from parley_client import ParleyClient
from parley_testing.platform import RunningPlatform
from parley_testing.stack import PASSWORD
from parley_testing.waiting import eventually

pytestmark = pytest.mark.e2e

TIMEOUT_S = 30.0
GATEWAY = gateway_pb2.DESCRIPTOR.services_by_name["Gateway"]
CHAT_MESSAGE = messaging_pb2.ChatMessage.DESCRIPTOR.full_name
HIDDEN = "sent before you joined"
# The live stream's cell (Subscribe: live events and resume of earlier messages) is the live
# fan-out's; its test walks those paths as a newcomer of a hide-history channel.
COVERED_ELSEWHERE = {
    "Subscribe": "services/gateway/tests/test_live_fanout.py::test_a_hidden_history_stays_hidden_live_and_on_resume"
}


def carries_message_content(message: Descriptor, seen: frozenset[str] = frozenset()) -> bool:
    """Whether a response of this type can hold a message's text or sender: a ChatMessage or a
    body field at any depth (ListMessageVersionsResponse holds bare bodies)."""
    if message.full_name == CHAT_MESSAGE:
        return True
    for f in message.fields:
        if f.name in ("body", "bodies"):
            return True
        nested = f.message_type
        if (
            nested is not None
            and nested.full_name not in seen
            and carries_message_content(nested, seen | {message.full_name})
        ):
            return True
    return False


@dataclass
class Scene:
    """A hide-history channel and what its newcomer may and may not know."""

    channel_id: str = ""
    newcomer_token: str = ""
    newcomer_id: str = ""
    secrets: dict[str, str] = field(default_factory=dict)  # what must never reach the newcomer
    hidden_seqs: tuple[int, ...] = ()
    visible: dict[str, int] = field(default_factory=dict)  # a visible message per purpose
    visible_text: str = ""
    old_send_key: str = ""  # the idempotency key of the newcomer's send before they left


@dataclass(frozen=True)
class Probe:
    """Requests about one message; `visible_seq` names the visible message the request works on."""

    build: Callable[[Scene, int], Message]
    visible_seq: str = "root"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def set_scene(platform: RunningPlatform) -> Scene:
    def client() -> ParleyClient:
        return platform.client()

    owner, early, newcomer = client(), client(), client()
    names = {c: unique(n) for c, n in ((owner, "owner"), (early, "early"), (newcomer, "newcomer"))}
    for c, name in names.items():
        await c.register(name, PASSWORD)
        await c.login(name, PASSWORD)
    room = await owner.create_channel(unique("hidden"), hide_history_before_join=True)
    cid = room.channel_id
    scene = Scene(channel_id=cid, newcomer_id=newcomer.user_id or "")

    # The newcomer was here once, said something, and left.
    await newcomer.join_channel(cid)
    own_old = unique("newcomer-old-text")
    scene.old_send_key = unique("key")
    await newcomer.send(cid, own_old, idempotency_key=scene.old_send_key)
    await newcomer.leave_channel(cid)
    # What happened while they were away: a post, its reply, its edit, a reaction.
    await early.join_channel(cid)
    texts = {"post": unique("early-post"), "reply": unique("early-reply"), "edit": unique("early-edit")}
    post = await early.send(cid, texts["post"])
    reply = await early.reply(cid, post.channel_seq, texts["reply"])
    await early.edit(cid, post.channel_seq, texts["edit"])
    await early.react(cid, post.channel_seq, "🎉")
    scene.secrets = {
        **texts,
        "own-old": own_old,
        "sender-name": names[early],
        "sender-id": early.user_id or "",
    }
    scene.hidden_seqs = (1, post.channel_seq, reply.channel_seq)

    # Back again: from here on the newcomer reads; a moderator, so roles refuse nothing below.
    joined = await newcomer.join_channel(cid)
    assert joined.visible_from_seq == reply.channel_seq + 1
    await owner.set_role(cid, scene.newcomer_id, "moderator")
    scene.visible_text = unique("visible")
    root = await owner.send(cid, scene.visible_text)
    await owner.reply(cid, root.channel_seq, unique("visible-reply"))
    await owner.edit(cid, root.channel_seq, scene.visible_text + " (edited)")
    to_redact = await owner.send(cid, unique("to-redact"))
    own_new = await newcomer.send(cid, unique("newcomer-new"))
    scene.visible = {"root": root.channel_seq, "redact": to_redact.channel_seq, "own": own_new.channel_seq}
    scene.newcomer_token = newcomer.access_token or ""
    # History is the archive's: wait until it has everything, so a leak could not hide in its lag.
    await eventually(lambda: history_has(newcomer, cid, own_new.channel_seq), "the archive to catch up", TIMEOUT_S)
    for c in (owner, early, newcomer):
        await c.close()
    return scene


async def history_has(client: ParleyClient, channel_id: str, seq: int) -> bool | None:
    page = await client.history(channel_id)
    return True if any(m.channel_seq == seq for m in page.messages) else None


# One row per gateway RPC whose response can carry message content: the requests it takes about
# one message. Each runs about every hidden message (refused, no byte of it in the refusal) and
# about a visible one (answered, which shows the refusal is the visibility rule's).
PROBES: dict[str, list[Probe]] = {
    "SendMessage": [
        Probe(lambda s, seq: messaging_pb2.PostMessageRequest(channel_id=s.channel_id, body="a", thread_root_seq=seq))
    ],
    "EditMessage": [
        Probe(
            lambda s, seq: messaging_pb2.EditMessageRequest(channel_id=s.channel_id, channel_seq=seq, body="changed"),
            visible_seq="own",
        )
    ],
    "RedactMessage": [
        Probe(
            lambda s, seq: messaging_pb2.RedactMessageRequest(channel_id=s.channel_id, channel_seq=seq),
            visible_seq="redact",
        )
    ],
    "ListMessageVersions": [
        Probe(lambda s, seq: messaging_pb2.ListMessageVersionsRequest(channel_id=s.channel_id, channel_seq=seq))
    ],
    "ListThread": [Probe(lambda s, seq: messaging_pb2.ListThreadRequest(channel_id=s.channel_id, root_seq=seq))],
    "React": [
        Probe(lambda s, seq: messaging_pb2.ReactRequest(channel_id=s.channel_id, channel_seq=seq, emoji="👍")),
        # Taking back a reaction, one's own or someone else's, says nothing of the message either.
        Probe(
            lambda s, seq: messaging_pb2.ReactRequest(channel_id=s.channel_id, channel_seq=seq, emoji="👍", remove=True)
        ),
        Probe(
            lambda s, seq: messaging_pb2.ReactRequest(channel_id=s.channel_id, channel_seq=seq, emoji="🎉", remove=True)
        ),
    ],
}


def year(y: int) -> Timestamp:
    return Timestamp(seconds=int((y - 1970) * 365.25 * 86400))


# Calls that read many messages at once: answered, with what came after the join only.
PAGES: dict[str, Callable[[Scene], list[Message]]] = {
    "GetHistory": lambda s: [
        storage_pb2.GetChannelHistoryRequest(channel_id=s.channel_id),
        storage_pb2.GetChannelHistoryRequest(channel_id=s.channel_id, limit=500),
        storage_pb2.GetChannelHistoryRequest(channel_id=s.channel_id, before_seq=s.visible["own"] + 1),
        storage_pb2.GetChannelHistoryRequest(channel_id=s.channel_id, before_seq=s.visible["root"]),
        storage_pb2.GetChannelHistoryRequest(channel_id=s.channel_id, after_time=year(1971)),
        storage_pb2.GetChannelHistoryRequest(channel_id=s.channel_id, before_time=year(2200)),
    ],
    # Not a ChatMessage by type, but an archive of events: none of them another's earlier message.
    "ExportUserData": lambda s: [storage_pb2.ExportUserDataRequest(user_id=s.newcomer_id)],
}


@pytest.fixture(scope="module")
def scene(platform: RunningPlatform) -> Scene:
    return asyncio.run(set_scene(platform))


async def call(platform: RunningPlatform, scene: Scene, method: str, request: Message) -> tuple[bytes, str, str]:
    """The raw answer: response bytes (empty on an error), status code name, error details."""
    async with platform.gateway_channel() as channel:
        raw = channel.unary_unary(f"/{GATEWAY.full_name}/{method}")
        metadata = (("authorization", f"Bearer {scene.newcomer_token}"),)
        try:
            answer = await raw(request.SerializeToString(), metadata=metadata, timeout=TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            return b"", exc.code().name, exc.details() or ""
    assert isinstance(answer, bytes)
    return answer, "OK", ""


def leaked(scene: Scene, answer: bytes, details: str, *, except_own: bool = False) -> list[str]:
    secrets = {k: v for k, v in scene.secrets.items() if not (except_own and k == "own-old")}
    return [name for name, text in secrets.items() if text.encode() in answer or text in details]


def test_every_rpc_that_returns_message_content_has_a_probe() -> None:
    content = {m.name for m in GATEWAY.methods if carries_message_content(m.output_type)}
    assert content, "the descriptor walk found nothing: it is broken"
    assert {"GetHistory", "ListThread", "ListMessageVersions", "React", "Subscribe"} <= content
    unprobed = content - set(PROBES) - set(PAGES) - set(COVERED_ELSEWHERE)
    assert not unprobed, f"add a row to PROBES or PAGES for {sorted(unprobed)}"


def method(name: str) -> MethodDescriptor:
    return GATEWAY.methods_by_name[name]


@pytest.mark.parametrize(("name", "index"), [(n, i) for n, probes in PROBES.items() for i in range(len(probes))])
async def test_a_hidden_message_yields_no_byte(platform: RunningPlatform, scene: Scene, name: str, index: int) -> None:
    probe = PROBES[name][index]
    for seq in scene.hidden_seqs:
        request = probe.build(scene, seq)
        assert method(name).input_type == request.DESCRIPTOR
        answer, code, details = await call(platform, scene, name, request)
        assert not leaked(scene, answer, details), f"{name} about #{seq} leaked {leaked(scene, answer, details)}"
        assert (code, HIDDEN in details) == ("PERMISSION_DENIED", True), f"{name} about #{seq}: {code} {details}"

    visible = scene.visible[probe.visible_seq]
    answer, code, details = await call(platform, scene, name, probe.build(scene, visible))
    assert code == "OK", f"{name} about visible #{visible}: {code} {details}"
    assert not leaked(scene, answer, details)


@pytest.mark.parametrize("name", list(PAGES))
async def test_pages_of_messages_hold_only_what_came_after_the_join(
    platform: RunningPlatform, scene: Scene, name: str
) -> None:
    for request in PAGES[name](scene):
        answer, code, details = await call(platform, scene, name, request)
        assert code == "OK", f"{name}({request}): {code} {details}"
        # The newcomer's own export holds what they wrote themselves, earlier membership included.
        assert not leaked(scene, answer, details, except_own=name == "ExportUserData"), f"{name}({request})"
        if name == "GetHistory" and request.before_seq != scene.visible["root"]:
            response = storage_pb2.GetChannelHistoryResponse.FromString(answer)
            assert min(m.channel_seq for m in response.messages) == scene.visible["root"]
            assert scene.visible_text.encode() in answer


async def test_a_retried_send_from_before_the_join_returns_nothing_of_it(
    platform: RunningPlatform, scene: Scene
) -> None:
    """A send's retry returns the first result; not when that result is now hidden from its sender."""
    request = messaging_pb2.PostMessageRequest(
        channel_id=scene.channel_id, body="again", idempotency_key=scene.old_send_key
    )
    answer, code, details = await call(platform, scene, "SendMessage", request)
    assert not leaked(scene, answer, details)
    assert (code, "idempotency key was used before you joined" in details) == ("FAILED_PRECONDITION", True)

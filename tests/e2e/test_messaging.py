"""Issue 4 end to end: conversations, live streams that resume, edits, redactions, idempotent
retries across restarts and a bounded slow consumer, through the platform as `make run` starts it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC

import grpc
import pytest
from parley.messaging.v1.messaging_pb2 import Channel
from parley.storage.v1.storage_pb2 import GetChannelHistoryResponse as HistoryPage

from parley_client import LiveEvent, LiveStream, ParleyClient, ParleyError
from parley_core.net import free_port
from parley_testing.platform import RunningPlatform, gateway_budgets, platform_in
from parley_testing.stack import PASSWORD
from parley_testing.waiting import eventually, until, wait_until

pytestmark = pytest.mark.e2e

LIVE_BUFFER = 10
TIMEOUT_S = 30.0


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningPlatform]:
    """The platform with a small live buffer, so a slow reader overflows it within seconds."""
    # The slow-reader test sends hundreds of messages from one user and address quickly.
    running = platform_in(
        tmp_path_factory.mktemp("platform"), PARLEY_GATEWAY_LIVE_BUFFER=str(LIVE_BUFFER), **gateway_budgets(2000)
    )
    yield from running.served()


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


async def new_user(platform: RunningPlatform, prefix: str) -> ParleyClient:
    return await platform.new_user(unique(prefix))


async def history_until(
    client: ParleyClient, channel_id: str, condition: Callable[[HistoryPage], object], *, timeout: float = TIMEOUT_S
) -> HistoryPage:
    """History comes from the archive, which trails a send by the archive lag: wait for `condition(page)`."""

    async def met() -> HistoryPage | None:
        page = await client.history(channel_id)
        return page if condition(page) else None

    return await eventually(met, "history to meet the condition", timeout)


def cli_users(platform: RunningPlatform, *prefixes: str) -> list[str]:
    """New users registered and logged in with the CLI, one a prefix: their names."""
    names = [unique(prefix) for prefix in prefixes]
    for name in names:
        platform.cli("register", name, stdin=PASSWORD + "\n")
        platform.cli("login", name, stdin=PASSWORD + "\n")
    return names


async def two_in_a_channel(
    platform: RunningPlatform, creator: str, member: str, name: str
) -> tuple[ParleyClient, ParleyClient, Channel]:
    """Two new users: the first creates the channel `name`, the second joins it."""
    first, second = await new_user(platform, creator), await new_user(platform, member)
    channel = await first.create_channel(name)
    await second.join_channel(channel.channel_id)
    return first, second, channel


async def subscribed(client: ParleyClient, channel_ids: list[str]) -> LiveStream:
    """The client's live stream of `channel_ids`, once the gateway has it open."""
    stream = client.subscribe(channel_ids)
    await asyncio.wait_for(stream.ready(), TIMEOUT_S)
    return stream


def crash_and_wait_for_restart(platform: RunningPlatform, service: str) -> None:
    """SIGKILL one service, as a crash would; `parley up` restarts it."""
    line = f"{service} is serving again"
    before = platform.output().count(line)
    os.kill(int(str(platform.service(service)["pid"])), signal.SIGKILL)
    wait_until(lambda: platform.output().count(line) > before, timeout=120, what=f"{service} to be restarted")


async def read_messages(stream_events: object, count: int, *, kinds: tuple[str, ...] = ()) -> list[LiveEvent]:
    """The next `count` live events (of `kinds` only, when given)."""
    got: list[LiveEvent] = []

    async def collect() -> None:
        async for event in stream_events:  # type: ignore[attr-defined]
            if kinds and event.kind not in kinds:
                continue
            got.append(event)
            if len(got) == count:
                return

    await asyncio.wait_for(collect(), TIMEOUT_S)
    return got


async def test_three_users_chat_live_and_read_the_same_history(platform: RunningPlatform) -> None:
    alice, bob, carol = [await new_user(platform, n) for n in ("alice", "bob", "carol")]
    channel = await alice.create_channel("three")
    for member in (bob, carol):
        await member.join_channel(channel.channel_id)
    streams = [await subscribed(c, [channel.channel_id]) for c in (alice, bob, carol)]

    lines = [(alice, "hi all"), (bob, "hi alice"), (carol, "hello both"), (alice, "shall we start?")]
    for sender, text in lines:
        await sender.send(channel.channel_id, text)

    expected = [(n + 1, sender.user_id, text) for n, (sender, text) in enumerate(lines)]
    for stream in streams:
        seen = await read_messages(stream.events(), len(lines))
        assert [(e.message.channel_seq, e.message.sender_id, e.message.body) for e in seen] == expected
        stream.cancel()
    for reader in (alice, bob, carol):
        page = await history_until(reader, channel.channel_id, lambda p: len(p.messages) == len(lines))
        assert [(m.channel_seq, m.sender_id, m.body) for m in page.messages] == expected
    for client in (alice, bob, carol):
        await client.close()


async def test_resume_after_a_dropped_stream_has_no_gap_and_no_duplicate(platform: RunningPlatform) -> None:
    alice, bob, channel = await two_in_a_channel(platform, "alice", "bob", "resume")
    stream = await subscribed(bob, [channel.channel_id])
    for n in range(1, 7):
        await alice.send(channel.channel_id, f"m{n}")
    first = await read_messages(stream.events(), 3)
    stream.cancel()  # the connection drops mid-conversation: m4..m6 are sent but not read
    positions = stream.positions

    for n in range(7, 11):
        await alice.send(channel.channel_id, f"m{n}")
    await alice.edit(channel.channel_id, 2, "m2, edited")
    resumed = bob.subscribe([channel.channel_id], resume=positions)
    await asyncio.wait_for(resumed.ready(), TIMEOUT_S)
    rest = await read_messages(resumed.events(), 8)
    await alice.send(channel.channel_id, "m11")  # after the catch-up, live again
    rest += await read_messages(resumed.events(), 1)
    resumed.cancel()

    seen = [(e.kind, e.message.channel_seq, e.message.body) for e in first + rest]
    assert seen == [
        *(("message", n, f"m{n}") for n in range(1, 11)),
        ("updated", 2, "m2, edited"),
        ("message", 11, "m11"),
    ]
    await alice.close()
    await bob.close()


async def test_live_helper_resumes_by_itself_across_a_gateway_crash(platform: RunningPlatform) -> None:
    alice, bob, channel = await two_in_a_channel(platform, "alice", "bob", "crash")
    for n in range(1, 5):
        await alice.send(channel.channel_id, f"m{n}")
    seen: list[int] = []

    async def follow() -> None:
        # Position 0: from the channel's first event on.
        async for event in bob.live([channel.channel_id], resume={channel.channel_id: 0}):
            if event.kind == "message":
                seen.append(event.message.channel_seq)
            if len(seen) == 8:
                return

    follower = asyncio.create_task(follow())

    def caught_up() -> bool:  # the follower is live: it has caught up with m1..m4
        assert not follower.done(), follower.result()
        return len(seen) >= 4

    await until(caught_up, "the follower to read m1..m4", TIMEOUT_S)
    await asyncio.to_thread(crash_and_wait_for_restart, platform, "gateway")
    for n in range(5, 9):
        await alice.send(channel.channel_id, f"m{n}")
    await asyncio.wait_for(follower, 60)
    assert seen == list(range(1, 9))
    await alice.close()
    await bob.close()


async def test_retried_send_returns_the_first_message_after_a_messaging_crash(platform: RunningPlatform) -> None:
    frank = await new_user(platform, "frank")
    channel = await frank.create_channel("retries")
    first = await frank.send(channel.channel_id, "only once", idempotency_key="send-1")
    await asyncio.to_thread(crash_and_wait_for_restart, platform, "messaging")

    retry = await frank.send(channel.channel_id, "only once", idempotency_key="send-1")
    after = await frank.send(channel.channel_id, "next", idempotency_key="send-2")
    assert (retry.message_id, retry.channel_seq) == (first.message_id, 1)
    assert after.channel_seq == 2
    page = await history_until(frank, channel.channel_id, lambda p: len(p.messages) >= 2)
    assert [(m.channel_seq, m.body) for m in page.messages] == [(1, "only once"), (2, "next")]
    await frank.close()


async def test_redaction_removes_the_text_from_history_archive_and_live(platform: RunningPlatform) -> None:
    owner, bob, channel = await two_in_a_channel(platform, "owner", "bob", "redact")
    secret = unique("the-door-code-is-")
    stream = await subscribed(owner, [channel.channel_id])
    posted = await bob.send(channel.channel_id, f"oops: {secret}")
    await bob.edit(channel.channel_id, posted.channel_seq, f"oops (edited): {secret}")
    assert await owner.message_versions(channel.channel_id, posted.channel_seq) == [
        f"oops: {secret}",
        f"oops (edited): {secret}",
    ]
    with pytest.raises(ParleyError) as denied:
        await bob.message_versions(channel.channel_id, posted.channel_seq)
    assert denied.value.code == grpc.StatusCode.PERMISSION_DENIED
    await history_until(owner, channel.channel_id, lambda p: p.messages and "edited" in p.messages[0].body)

    redacted = await owner.redact(channel.channel_id, posted.channel_seq, reason="leaked a code")
    assert redacted.redacted
    assert redacted.body == ""
    # Bob's join, made just before the stream opened, may still reach it: only messages count here.
    events = await read_messages(stream.events(), 3, kinds=("message", "updated"))
    assert [(e.kind, e.message.redacted) for e in events] == [("message", False), ("updated", False), ("updated", True)]
    page = await history_until(owner, channel.channel_id, lambda p: p.messages and p.messages[0].redacted)
    assert (page.messages[0].channel_seq, page.messages[0].body) == (posted.channel_seq, "")
    assert await owner.message_versions(channel.channel_id, posted.channel_seq) == []
    with pytest.raises(ParleyError) as refused:
        await bob.edit(channel.channel_id, posted.channel_seq, "bringing it back")
    assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION

    archive = sqlite3.connect(platform.data_dir / "storage" / "archive.db")
    try:
        query = "SELECT event_type, key_id FROM events WHERE aggregate_id = ? AND event_type LIKE '%Message%'"
        rows = archive.execute(query, (channel.channel_id,)).fetchall()
    finally:
        archive.close()
    # The post and the edit lost their (sealed) content in the archive; the redaction is kept.
    key_of = {event_type.rsplit(".", 1)[-1]: key_id for event_type, key_id in rows}
    assert len(rows) == 3
    assert key_of["MessagePosted"] == key_of["MessageEdited"] == "expired"
    assert key_of["MessageRedacted"] != "expired"
    stream.cancel()
    await owner.close()
    await bob.close()


async def test_a_slow_reader_is_told_to_resync_and_resumes_without_gap(platform: RunningPlatform) -> None:
    sender, slow, channel = await two_in_a_channel(platform, "sender", "slow", "firehose")
    stream = await subscribed(slow, [channel.channel_id])
    body = "\N{EURO SIGN}" * 4000  # 12 kB each: gRPC's and the kernel's buffers fill sooner
    total = 600
    for _ in range(total // 10):
        await asyncio.gather(*(sender.send(channel.channel_id, body) for _ in range(10)))

    got: list[int] = []

    async def read_all() -> None:
        async for message in stream:
            got.append(message.channel_seq)

    with pytest.raises(ParleyError) as told:
        await asyncio.wait_for(read_all(), TIMEOUT_S)
    assert told.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "resume" in told.value.message
    # The gateway kept at most its buffer; what reached the reader is what the transport held.
    print(f"slow reader: {len(got)} of {total} messages delivered before the resync")
    assert got == list(range(1, len(got) + 1))
    assert len(got) < total

    resumed = slow.subscribe([channel.channel_id], resume=stream.positions)
    await asyncio.wait_for(resumed.ready(), TIMEOUT_S)
    rest = [e.message.channel_seq for e in await read_messages(resumed.events(), total - len(got))]
    assert got + rest == list(range(1, total + 1))
    resumed.cancel()
    await sender.close()
    await slow.close()


async def test_history_pages_backwards_and_forwards(platform: RunningPlatform) -> None:
    alice = await new_user(platform, "pager")
    channel = await alice.create_channel("pages")
    for n in range(1, 8):
        await alice.send(channel.channel_id, f"m{n}")
    await history_until(alice, channel.channel_id, lambda p: len(p.messages) == 7)
    newest = await alice.history(channel.channel_id, before_seq=8, limit=3)
    older = await alice.history(channel.channel_id, before_seq=newest.messages[0].channel_seq, limit=3)
    oldest = await alice.history(channel.channel_id, before_seq=older.messages[0].channel_seq, limit=3)
    forward = await alice.history(channel.channel_id, after_seq=4, limit=2)
    assert [[m.channel_seq for m in p.messages] for p in (newest, older, oldest, forward)] == [
        [5, 6, 7],
        [2, 3, 4],
        [1],
        [5, 6],
    ]
    assert (newest.has_more, older.has_more, oldest.has_more, forward.has_more) == (True, True, False, True)
    fourth = older.messages[-1].sent_at.ToDatetime(UTC)  # message #4
    after_time = await alice.history(channel.channel_id, after_time=fourth, limit=2)
    before_time = await alice.history(channel.channel_id, before_time=fourth, limit=2)
    assert [m.channel_seq for m in after_time.messages] == [5, 6]
    assert [m.channel_seq for m in before_time.messages] == [2, 3]
    assert before_time.has_more
    await alice.close()


def test_cli_edits_redacts_and_pages_back(platform: RunningPlatform) -> None:
    owner, member = cli_users(platform, "cli-owner", "cli-member")
    channel_id = platform.cli("--as", owner, "create-channel", "cli-edits").stdout.strip().rsplit(" ", 1)[-1]
    assert "joined #cli-edits (2 members)" in platform.cli("--as", member, "join", channel_id).stdout
    for n in (1, 2, 3):
        assert f"sent #{n}" in platform.cli("--as", member, "send", "cli-edits", f"line {n}").stdout
    # A send whose outcome was unknown, sent again with its key: the first result, nothing new.
    keyed = ("--as", member, "send", "cli-edits", "line 4", "--idempotency-key", "cli-key-4")
    assert "sent #4" in platform.cli(*keyed).stdout
    assert "sent #4" in platform.cli(*keyed).stdout
    assert "sent #5" in platform.cli("--as", member, "send", "cli-edits", "line 5").stdout
    assert "edited #2 (1 edit)" in platform.cli("--as", member, "edit", "cli-edits", "2", "line two").stdout
    assert "redacted #3" in platform.cli("--as", owner, "redact", "cli-edits", "3", "--reason", "spam").stdout
    versions = platform.cli("--as", owner, "versions", "cli-edits", "2").stdout
    assert versions.splitlines() == ["v1: line 2", "v2: line two"]
    wait_until(
        lambda: "(redacted)" in platform.cli("--as", member, "history", "cli-edits").stdout,
        timeout=TIMEOUT_S,
        what="the redaction in the archive",
    )
    history = platform.cli("--as", member, "history", "cli-edits").stdout
    assert "line two" in history
    assert "line 2\n" not in history
    assert "line 3" not in history
    older = platform.cli("--as", member, "older", "cli-edits", "3", "--limit", "1").stdout
    assert "line two" in older
    assert f"--as {member} older cli-edits 2" in older  # runnable as printed: as the same user
    refused = platform.cli("--as", member, "versions", "cli-edits", "2", check=False)
    assert refused.returncode == 1
    assert "PERMISSION_DENIED" in refused.stderr
    kicked = platform.cli("--as", owner, "kick", "cli-edits", member).stdout
    assert "kick: done; #cli-edits has 1 member\n" in kicked


async def test_private_channels_roles_kick_ban_dm_and_hidden_history(platform: RunningPlatform) -> None:
    owner, mod, member, outsider = [await new_user(platform, n) for n in ("owner", "mod", "member", "outsider")]
    channel = await owner.create_channel("staff", private=True, hide_history_before_join=True)
    cid = channel.channel_id

    async def status_of(call: object) -> grpc.StatusCode:
        with pytest.raises(ParleyError) as caught:
            await call  # type: ignore[misc]
        return caught.value.code

    assert await status_of(outsider.join_channel(cid)) == grpc.StatusCode.PERMISSION_DENIED
    await owner.send(cid, "before anyone else joined")
    await owner.invite(cid, mod.user_id or "")
    await mod.join_channel(cid)
    roles = (await owner.set_role(cid, mod.user_id or "", "moderator")).roles
    assert roles[mod.user_id or ""] == "moderator"
    await mod.invite(cid, member.user_id or "")
    joined = await member.join_channel(cid)
    assert joined.visible_from_seq == 2
    await mod.send(cid, "after member joined")
    page = await history_until(member, cid, lambda p: len(p.messages) >= 1)
    assert [m.body for m in page.messages] == ["after member joined"]  # seq 1 stays hidden
    assert [m.body for m in (await history_until(owner, cid, lambda p: len(p.messages) == 2)).messages] == [
        "before anyone else joined",
        "after member joined",
    ]

    renamed = await mod.rename(cid, "staff-room")
    topical = await mod.set_topic(cid, "rota and incidents")
    assert (renamed.name, topical.topic) == ("staff-room", "rota and incidents")
    assert await status_of(member.set_topic(cid, "mine now")) == grpc.StatusCode.PERMISSION_DENIED
    assert await status_of(member.kick(cid, mod.user_id or "")) == grpc.StatusCode.PERMISSION_DENIED
    assert await status_of(mod.kick(cid, owner.user_id or "")) == grpc.StatusCode.PERMISSION_DENIED

    stream = await subscribed(member, [cid])
    banned = await mod.ban(cid, member.user_id or "", reason="spam")
    assert member.user_id not in banned.member_ids
    with pytest.raises(ParleyError) as ended:
        await asyncio.wait_for(anext(aiter(stream)), TIMEOUT_S)
    assert ended.value.code == grpc.StatusCode.PERMISSION_DENIED  # a removed member's live stream ends
    assert await status_of(member.send(cid, "let me back")) == grpc.StatusCode.PERMISSION_DENIED
    assert await status_of(mod.invite(cid, member.user_id or "")) == grpc.StatusCode.FAILED_PRECONDITION
    await history_until(owner, cid, lambda p: True)
    await mod.unban(cid, member.user_id or "")
    await mod.invite(cid, member.user_id or "")
    await member.join_channel(cid)
    kicked = await owner.kick(cid, mod.user_id or "")
    assert mod.user_id not in kicked.member_ids

    direct = await outsider.create_direct([member.user_id or "", owner.user_id or ""])
    assert direct.direct
    assert set(direct.member_ids) == {outsider.user_id, member.user_id, owner.user_id}
    await member.send(direct.channel_id, "hi, just us three")
    assert await status_of(mod.join_channel(direct.channel_id)) == grpc.StatusCode.PERMISSION_DENIED
    page = await history_until(owner, direct.channel_id, lambda p: len(p.messages) == 1)
    assert page.messages[0].body == "hi, just us three"
    for client in (owner, mod, member, outsider):
        await client.close()


async def test_threads_reactions_read_markers_and_unread_counts(platform: RunningPlatform) -> None:
    alice, bob, channel = await two_in_a_channel(platform, "alice", "bob", "threads")
    cid = channel.channel_id
    stream = await subscribed(bob, [cid])

    root = await alice.send(cid, "lunch?")
    first = await bob.reply(cid, root.channel_seq, "yes, 12:30")
    await alice.reply(cid, root.channel_seq, "great")
    with pytest.raises(ParleyError) as nested:
        await alice.reply(cid, first.channel_seq, "a reply to a reply")
    assert nested.value.code == grpc.StatusCode.INVALID_ARGUMENT
    thread = await bob.thread(cid, root.channel_seq)
    assert thread.root.reply_count == 2
    assert [(m.body, m.thread_root_seq) for m in thread.replies] == [("yes, 12:30", 1), ("great", 1)]

    reacted = await bob.react(cid, root.channel_seq, "👍")
    await alice.react(cid, root.channel_seq, "👍")
    await alice.react(cid, root.channel_seq, "👍", remove=True)
    again = await bob.react(cid, root.channel_seq, "👍")  # a retry changes nothing
    assert [(r.emoji, list(r.user_ids)) for r in reacted.reactions] == [("👍", [bob.user_id])]
    assert [(r.emoji, list(r.user_ids)) for r in again.reactions] == [("👍", [bob.user_id])]

    mine = {c.channel_id: c for c in await bob.my_channels()}[cid]
    assert (mine.read_seq, mine.unread_count) == (0, 2)  # alice's two messages; bob's own reply is read
    marked = await bob.mark_read(cid, 2)
    assert (marked.read_seq, marked.unread_count) == (2, 1)
    assert (await bob.mark_read(cid, 1)).read_seq == 2  # markers never move back

    events = await read_messages(stream.events(), 7)
    assert [e.kind for e in events] == [
        "message",
        "message",
        "message",
        "reaction",
        "reaction",
        "reaction",
        "read_marker",
    ]
    assert [e.event.reaction.removed for e in events[3:6]] == [False, False, True]
    assert events[6].event.read_marker.channel_seq == 2
    kicked = await alice.kick(cid, bob.user_id or "")
    assert bob.user_id not in kicked.member_ids
    stream.cancel()
    watcher = alice.subscribe([cid], resume={cid: events[-1].position})
    await asyncio.wait_for(watcher.ready(), TIMEOUT_S)
    [left] = await read_messages(watcher.events(), 1)
    assert (left.kind, left.event.membership.change, left.event.membership.user_id) == (
        "membership",
        "kicked",
        bob.user_id,
    )
    watcher.cancel()
    await alice.close()
    await bob.close()


def test_cli_private_channel_threads_reactions_and_direct_conversations(platform: RunningPlatform) -> None:
    owner, guest = cli_users(platform, "cli-host", "cli-guest")
    created = platform.cli("--as", owner, "create-channel", "--private", "--hide-history", "cli-private").stdout
    channel_id = created.strip().rsplit(" ", 1)[-1]
    refused = platform.cli("--as", guest, "join", channel_id, check=False)
    assert refused.returncode == 1
    assert "invite" in refused.stderr
    guest_user_id = _user_id_of(platform, guest)
    assert "invite: done" in platform.cli("--as", owner, "invite", "cli-private", guest_user_id).stdout
    assert "joined #cli-private" in platform.cli("--as", guest, "join", channel_id).stdout
    platform.cli("--as", owner, "send", "cli-private", "agenda?")
    assert "in the thread of #1" in platform.cli("--as", guest, "reply", "cli-private", "1", "item one").stdout
    assert "reacted 👍 to #1 (1 so far)" in platform.cli("--as", guest, "react", "cli-private", "1", "👍").stdout
    thread = platform.cli("--as", owner, "thread", "cli-private", "1").stdout
    assert "agenda?" in thread
    assert "item one" in thread
    dm = platform.cli("--as", owner, "dm", guest_user_id).stdout
    assert dm.startswith("direct conversation ")
    assert "left #cli-private" in platform.cli("--as", guest, "leave", "cli-private").stdout


def _user_id_of(platform: RunningPlatform, user: str) -> str:
    """The CLI keeps each login's user id beside its token, in <data dir>/cli/<user>.json."""
    return str(json.loads((platform.data_dir / "cli" / f"{user.casefold()}.json").read_text())["user_id"])


async def test_two_gateway_instances_share_the_clients_of_a_channel(platform: RunningPlatform) -> None:
    """A second gateway, started as `parley up` starts the first, fans out through NATS too."""
    state = platform.state
    services = state["services"]
    assert isinstance(services, dict)
    port = free_port()
    env = {
        **os.environ,
        **platform.env,
        "PARLEY_DATA_DIR": str(platform.data_dir),
        "PARLEY_NATS_URL": str(state["nats_url"]),
        "PARLEY_LISTEN_HOST": "127.0.0.1",
        "PARLEY_LISTEN_PORT": str(port),
        "PARLEY_INSTANCE_ID": "gateway-2",
        "PARLEY_AUTH_ADDR": services["auth"]["address"],
        "PARLEY_MESSAGING_ADDR": services["messaging"]["address"],
        "PARLEY_STORAGE_ADDR": services["storage"]["address"],
        "PARLEY_REGISTRY_ADDR": services["patch-registry"]["address"],
    }
    log = open(platform.data_dir.parent / "gateway-2.log", "wb")  # noqa: SIM115
    second = subprocess.Popen([sys.executable, "-m", "parley_gateway"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        alice = await new_user(platform, "alice")
        bob = ParleyClient.connect(f"127.0.0.1:{port}", ca_cert=platform.ca_cert.read_bytes())
        bob_name = unique("bob")

        async def registered() -> bool | None:
            try:
                await bob.register(bob_name, PASSWORD)
            except ParleyError as exc:
                if exc.code != grpc.StatusCode.UNAVAILABLE:
                    raise
                assert second.poll() is None, "the second gateway exited"
                return None
            return True

        await eventually(registered, "the second gateway to serve", 60, interval=0.2)
        await bob.login(bob_name, PASSWORD)
        channel = await alice.create_channel("two-gateways")
        await bob.join_channel(channel.channel_id)
        streams = [await subscribed(c, [channel.channel_id]) for c in (alice, bob)]
        await alice.send(channel.channel_id, "via gateway one")
        await bob.send(channel.channel_id, "via gateway two")
        for stream in streams:
            seen = await read_messages(stream.events(), 2)
            assert [e.message.body for e in seen] == ["via gateway one", "via gateway two"]
            stream.cancel()
        await alice.close()
        await bob.close()
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=60)
        log.close()


async def test_a_stream_told_of_an_arrival_elsewhere_still_resumes(platform: RunningPlatform) -> None:
    alice, bob = await new_user(platform, "alice"), await new_user(platform, "bob")
    home = (await bob.create_channel(unique("home"))).channel_id
    stream = await subscribed(bob, [home])
    club = (await alice.create_channel(unique("club"), private=True)).channel_id
    await alice.invite(club, bob.user_id or "")
    [invited] = await read_messages(stream.events(), 1, kinds=("membership",))
    assert (invited.channel_id, invited.event.membership.change) == (club, "invited")
    stream.cancel()
    # The positions are of the channels the stream covers: resuming with them is not refused
    # for a channel bob is only invited to.
    assert set(stream.positions) == {home}
    resumed = bob.subscribe([home], resume=stream.positions)
    assert await asyncio.wait_for(resumed.ready(), TIMEOUT_S) == [home]
    resumed.cancel()
    await alice.close()
    await bob.close()

"""What a new user met in the CLI: export and erasure of their data, people shown by name,
history showing edits, reactions and threads, and what others wrote shown, never interpreted."""

from __future__ import annotations

import asyncio
import json
import re
import stat
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from parley.messaging.v1.messaging_pb2 import Channel
from parley.storage.v1 import storage_pb2

from parley_client import ParleyClient, ParleyError
from parley_testing.platform import RunningPlatform
from parley_testing.stack import PASSWORD
from parley_testing.waiting import eventually

pytestmark = pytest.mark.e2e

KEY_BACKUP_REMINDER = "secrets/storage-kek.json changed"


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


async def cli(platform: RunningPlatform, *args: str, stdin: str | None = None, check: bool = True) -> str:
    result = await asyncio.to_thread(platform.cli, *args, stdin=stdin, check=check)
    return result.stdout + result.stderr


async def refused(platform: RunningPlatform, *args: str) -> str:
    """The one line a refused command prints (no traceback, nothing else)."""
    result = await asyncio.to_thread(platform.cli, *args, check=False)
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    return line


@asynccontextmanager
async def user(platform: RunningPlatform, name: str) -> AsyncIterator[ParleyClient]:
    async with platform.client() as client:
        await client.register(name, PASSWORD)
        await client.login(name, PASSWORD)
        await cli(platform, "login", name, stdin=PASSWORD + "\n")  # the CLI's own token
        yield client


@asynccontextmanager
async def a_message_in_a_room(
    platform: RunningPlatform, author: str, reader: str
) -> AsyncIterator[tuple[ParleyClient, ParleyClient, Channel, str]]:
    """`author` and `reader` in a new room, with one message of the author's in it (its body returned)."""
    async with user(platform, author) as a, user(platform, reader) as b:
        room = await a.create_channel(unique("room"))
        await b.join_channel(room.channel_id)
        marker = f"{author} {uuid.uuid4().hex}"
        await a.send(room.channel_id, marker)
        yield a, b, room, marker


async def export_holding(platform: RunningPlatform, marker: str, out: Path, *export: str) -> str:
    """The `export` command run into `out` until the export holds `marker`: the archive trails the stream."""

    async def exported() -> str | None:
        await cli(platform, *export, "--out", str(out))
        return text if marker in (text := out.read_text()) else None

    return await eventually(exported, f"{marker!r} in the export")


async def test_a_user_exports_and_erases_their_own_data_from_the_cli(platform: RunningPlatform, tmp_path: Path) -> None:
    alice, bob = unique("alice"), unique("bob")
    async with a_message_in_a_room(platform, alice, bob) as (a, b, room, marker):
        out = tmp_path / "alice.json"
        json.loads(await export_holding(platform, marker, out, "--as", alice, "export"))
        assert stat.S_IMODE(out.stat().st_mode) == 0o600

        # Through the gateway a user reaches only their own data.
        with pytest.raises(ParleyError) as refused:
            await b._call(b._stub.ExportUserData, storage_pb2.ExportUserDataRequest(user_id=a.user_id))
        assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED

        unconfirmed = await cli(platform, "--as", alice, "erase", stdin="", check=False)
        assert "--yes" in unconfirmed
        erased = await cli(platform, "--as", alice, "erase", "--yes", "--reason", "leaving")
        assert f"erased the data of {alice}" in erased
        assert KEY_BACKUP_REMINDER in erased  # the keyring's older copy would open alice's data in old backups

        history = await cli(platform, "--as", bob, "history", room.name)
        assert marker not in history
        assert "(erased with its author's data)" in history


async def test_the_operator_exports_and_erases_anyones_data(platform: RunningPlatform, tmp_path: Path) -> None:
    carol, dave = unique("carol"), unique("dave")
    async with a_message_in_a_room(platform, carol, dave) as (c, d, room, marker):
        await export_holding(platform, marker, tmp_path / "carol.json", "export", carol)
        erased = await cli(platform, "erase", carol, "--yes")
        assert f"erased the data of {carol}" in erased
        assert KEY_BACKUP_REMINDER in erased
        with pytest.raises(ParleyError) as refused:  # her session ends with her account
            await c.history(room.channel_id)
        assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED
        page = await d.history(room.channel_id)
        assert [m.erased for m in page.messages] == [True]
        # Her name no longer finds the account; an erasure to finish is called again by her id.
        by_name = await cli(platform, "erase", carol, "--yes", check=False)
        assert "an account already erased is named by its user id" in by_name
        again = await cli(platform, "erase", str(c.user_id), "--yes")
        assert f"erased the data of {c.user_id}: 0 keys destroyed" in again
        never = await cli(platform, "erase", "0" * 32, "--yes", check=False)  # a mistyped id is no erasure
        assert "NOT_FOUND" in never
        assert "erased the data" not in never
        unknown = await cli(platform, "erase", "nobody-at-all", "--yes", check=False)
        assert "NOT_FOUND" in unknown
        assert "Traceback" not in unknown
        assert KEY_BACKUP_REMINDER not in unknown  # nothing was shredded: the keyring is as it was


async def test_export_and_erase_refuse_what_they_would_get_wrong(platform: RunningPlatform, tmp_path: Path) -> None:
    alice, carol = unique("alice"), unique("carol")
    async with user(platform, alice), user(platform, carol) as c:
        # --out names a file in a folder that exists; said before the archive is walked.
        assert await refused(platform, "export", carol, "--out", str(tmp_path)) == (
            f"--out {tmp_path} is a folder: give a file name"
        )
        nowhere = tmp_path / "no-such-folder" / "carol.json"
        assert await refused(platform, "export", carol, "--out", str(nowhere)) == (
            f"--out {nowhere}: there is no folder {nowhere.parent} to write it in"
        )

        # USER and --as both: the operator would act on carol, while alice may have meant her own data.
        both = "name USER (as the operator) or use --as USER for your own data, not both"
        out = tmp_path / "carol.json"
        assert await refused(platform, "--as", alice, "export", carol, "--out", str(out)) == both
        assert not out.exists()
        assert await refused(platform, "--as", alice, "erase", carol, "--yes") == both
        assert [ch.channel_id for ch in await c.my_channels()] == []  # carol's account is still there


async def test_the_operator_rotates_storages_key_encryption_key(platform: RunningPlatform) -> None:
    alice = unique("alice")
    keyring = platform.data_dir / "secrets" / "storage-kek.json"
    async with user(platform, alice) as a:
        room = await a.create_channel(unique("room"))
        marker = f"kept {uuid.uuid4().hex}"
        await a.send(room.channel_id, marker)

        async def archived() -> str | None:
            text = await cli(platform, "--as", alice, "history", room.name)
            return text if marker in text else None

        await eventually(archived, "alice's message in the archive's history")
        before = keyring.read_text()
        first = await cli(platform, "rotate-kek")
        rewrapped = re.search(r"is now (\S+): (\d+) data keys re-wrapped, no event rewritten; destroyed: (.+)", first)
        assert rewrapped, first
        new_kek, count, destroyed = rewrapped.group(1), int(rewrapped.group(2)), rewrapped.group(3).split(", ")
        assert count >= 2  # at least alice's and the channel's keys
        assert KEY_BACKUP_REMINDER in first  # the key backup's copy is now out of date
        after = keyring.read_text()
        assert new_kek in after
        assert new_kek not in before
        assert all(kek in before and kek not in after for kek in destroyed)
        assert marker in await cli(platform, "--as", alice, "history", room.name)  # nothing rewritten, all readable

        second = await cli(platform, "rotate-kek")
        assert f"destroyed: {new_kek}" in second  # the generation the first rotation made is retired in turn


async def test_a_security_auditor_queries_the_archive_from_the_cli(platform: RunningPlatform) -> None:
    alice, auditor, member = unique("alice"), unique("auditor"), unique("member")
    for name, role in ((auditor, "security-auditor"), (member, "member")):
        await cli(platform, "admin", "create-user", name, "--role", role, stdin=PASSWORD + "\n")
        await cli(platform, "login", name, stdin=PASSWORD + "\n")
    async with user(platform, alice) as a:
        room = await a.create_channel(unique("room"))
        await cli(platform, "retention", room.channel_id, "30")
        await a.send(room.channel_id, "for the record")

        async def by_alice() -> list[dict[str, object]] | None:
            result = await asyncio.to_thread(
                platform.cli, "--as", auditor, "audit", "query", "--actor", alice, "--json", check=False
            )
            assert result.returncode == 0, result.stderr
            found = [json.loads(line) for line in result.stdout.splitlines()]
            types = {e["event_type"] for e in found}
            return found if {"parley.messaging.v1.MessagePosted", "parley.auth.v1.SessionStarted"} <= types else None

        events = await eventually(by_alice, "alice's message and her logins in the auditor's query")
        # Every service records her as user:<id> (parley_core.actor), and older forms read as that too.
        assert {e["actor"] for e in events} == {f"user:{a.user_id}"}
        assert {e["actor_name"] for e in events} == {alice}
        as_recorded = await cli(platform, "--as", auditor, "audit", "query", "--actor", f"user:{a.user_id}", "--json")
        assert len(as_recorded.splitlines()) == len(events)
        assert "parley.messaging.v1.ChannelCreated" in {e["event_type"] for e in events}
        about_alice = await cli(platform, "--as", auditor, "audit", "query", "--target", alice, check=False)
        assert f"auth.v1.UserRegistered  user:{alice}" in about_alice, about_alice  # resolved, shown by name
        # Narrowed to one target and a time range; the summary line counts them.
        # The operator's changes are in the trail too: the retention policy set above, a KEK rotation.
        policy_line = f"messaging.v1.ChannelRetentionSet  channel:{room.channel_id}  by platform"

        async def room_trail() -> str | None:
            out = await cli(platform, "--as", auditor, "audit", "query", "--target", room.channel_id)
            return out if policy_line in out else None

        about_room = await eventually(room_trail, "the retention policy in the audit trail")
        assert f"channel:{room.channel_id}  by {alice}" in about_room
        rotated = await cli(platform, "rotate-kek")

        async def rotation_recorded() -> str | None:
            out = await cli(platform, "--as", auditor, "audit", "query", "--target", "storage", "--json")
            found = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
            kinds = [e["event_type"] for e in found]
            return out if "parley.storage.v1.KeyEncryptionKeyRotated" in kinds else None

        await eventually(rotation_recorded, "the KEK rotation in the audit trail")
        assert "is now" in rotated
        listed = len(about_room.splitlines()) - 1
        assert about_room.rstrip().endswith(f"{listed} event" + ("" if listed == 1 else "s"))
        future = await cli(platform, "--as", auditor, "audit", "query", "--actor", alice, "--since", "2200-01-01")
        assert future.strip() == "0 events"
        paged = await cli(platform, "--as", auditor, "audit", "query", "--actor", alice, "--limit", "1")
        assert "more follow: add --after" in paged

        # The auditor also reads the retention policies; a member may do neither.
        assert room.channel_id in await cli(platform, "--as", auditor, "retention")
        for command in (("audit", "query"), ("retention",)):
            refused = await cli(platform, "--as", member, *command, check=False)
            assert "PERMISSION_DENIED" in refused
            assert "Traceback" not in refused
        unlogged = await cli(platform, "audit", "query", check=False)
        assert "parley --as AUDITOR audit query" in unlogged
        bad_time = await cli(platform, "--as", auditor, "audit", "query", "--since", "yesterday", check=False)
        assert "--since 'yesterday' is not a date or time" in bad_time
        too_late = await cli(platform, "--as", auditor, "audit", "query", "--until", "2999-01-01", check=False)
        assert "--until '2999-01-01' is outside 1970-01-01 .. 2262-04-11" in too_late
        for cursor in ("-5", str(2**64)):
            bad_cursor = await cli(platform, "--as", auditor, "audit", "query", "--after", cursor, check=False)
            assert "--after is a cursor a previous query printed" in bad_cursor
            assert "Traceback" not in bad_cursor
        nobody = await cli(platform, "--as", auditor, "audit", "query", "--actor", "nosuchuser")
        assert "note: no account is named 'nosuchuser'; --actor 'nosuchuser' is taken as an id" in nobody
        # What only the operator does is refused with --as, not done as the operator behind its back.
        for command in (("retention", room.channel_id, "7"), ("rotate-kek",)):
            refused = await cli(platform, "--as", auditor, *command, check=False)
            assert "is the operator's (this data folder's platform identity): run it without --as" in refused


async def test_history_shows_edits_reactions_threads_and_names(platform: RunningPlatform) -> None:
    alice, bob = unique("alice"), unique("bob")
    async with user(platform, alice) as a, user(platform, bob) as b:
        room = await a.create_channel(unique("room"))
        await b.join_channel(room.channel_id)
        first = await a.send(room.channel_id, "first draft")
        await a.edit(room.channel_id, first.channel_seq, "final words")
        await b.react(room.channel_id, first.channel_seq, "👍")
        await b.reply(room.channel_id, first.channel_seq, "a reply")
        gone = await b.send(room.channel_id, "oops")
        await b.redact(room.channel_id, gone.channel_seq)

        async def shown() -> str | None:
            text = await cli(platform, "--as", alice, "history", room.name)
            return text if "(redacted)" in text and "👍" in text else None

        history = await eventually(shown, "the reaction and the redaction in the archive's history")
        lines = history.splitlines()
        assert any("final words (edited)" in line and f"👍 {bob}" in line for line in lines), history
        assert any(f"{bob}: (in the thread of #{first.channel_seq}) a reply" in line for line in lines), history
        assert any(f"{bob}: (redacted)" in line for line in lines), history
        redacted = await cli(platform, "--as", alice, "versions", room.name, str(gone.channel_seq))
        assert redacted.strip() == f"#{gone.channel_seq} was redacted: no earlier texts are kept"
        assert b.user_id is not None
        assert b.user_id[:8] not in history


async def test_direct_conversations_are_listed_by_their_members_names(platform: RunningPlatform) -> None:
    alice, bob = unique("alice"), unique("bob")
    async with user(platform, alice) as a, user(platform, bob) as b:
        assert b.user_id is not None
        await a.create_direct([b.user_id])
        listed = await cli(platform, "--as", alice, "channels")
        assert f"direct with {bob}" in listed
        assert "#direct" not in listed


async def test_user_names_are_looked_up_in_bounded_batches(platform: RunningPlatform) -> None:
    name = unique("dora")
    async with user(platform, name) as d:
        assert d.user_id is not None
        assert await d.user_names([d.user_id, "0" * 32]) == {d.user_id: name}
        assert await d.user_names([d.user_id] * 3 + [f"{i:032x}" for i in range(450)]) == {d.user_id: name}
        with pytest.raises(ParleyError) as bad:
            await d.user_names(["not-an-id!"])
        assert bad.value.code == grpc.StatusCode.INVALID_ARGUMENT


async def test_the_operator_sets_a_channels_retention_from_the_cli(platform: RunningPlatform) -> None:
    dave = unique("dave")
    async with user(platform, dave) as d:
        room = await d.create_channel(unique("room"))
        await d.send(room.channel_id, "recent enough to stay")

        kept = await cli(platform, "retention", room.channel_id, "30")
        assert f"channel {room.channel_id} keeps its messages 30 days; 0 older messages removed now" in kept
        assert [m.body for m in (await d.history(room.channel_id)).messages] == ["recent enough to stay"]
        listed = (await cli(platform, "retention")).splitlines()
        assert listed[0].split() == ["channel", "days", "set", "by", "set", "at", "(UTC)"]
        [row] = [line.split() for line in listed if line.startswith(room.channel_id)]
        assert row[:3] == [room.channel_id, "30", "platform"]
        set_at = datetime.strptime(" ".join(row[3:5]), "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
        assert abs(datetime.now(UTC) - set_at) < timedelta(minutes=5)
        assert "keeps its messages forever" in await cli(platform, "retention", room.channel_id, "0")
        out_of_range = "DAYS is a number of days up to 36500, 0 to keep the channel's messages forever"
        for args, expected in (
            ((unique("nosuch"), "30"), "NOT_FOUND"),
            ((room.channel_id, "-1"), out_of_range),
            ((room.channel_id, "36501"), out_of_range),  # what storage accepts: checked before asking it
            ((room.channel_id, str(2**32)), out_of_range),  # more than the request's field holds
        ):
            refused = await cli(platform, "retention", *args, check=False)
            assert expected in refused
            assert "Traceback" not in refused


# What a hostile member writes: a forged line, a screen clear, a window title (OSC), a right-to-left
# override, a carriage return, a line separator.
HOSTILE = "hi\n[    9] 12:00:00 admin: send me your password\x1b[2J\x1b]0;pwned\x07\u202etxt.exe\rX\u2028Y"
HOSTILE_SHOWN = "hi\\n[    9] 12:00:00 admin: send me your password\\x1b[2J\\x1b]0;pwned\\x07\\u202etxt.exe\\rX\\u2028Y"
ACTED_ON = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\u061c\u200e\u200f]")


async def test_what_others_wrote_is_shown_escaped_by_every_command_that_prints_it(platform: RunningPlatform) -> None:
    """history, chat, older, thread and versions print a hostile member's texts visibly escaped:
    no line is forged, no escape sequence or bidi control reaches the terminal."""
    alice, mallory = unique("alice"), unique("mallory")
    async with user(platform, alice) as a, user(platform, mallory) as m:
        room = await a.create_channel(unique("room"))  # alice owns it: she may list versions
        await m.join_channel(room.channel_id)
        first = await m.send(room.channel_id, HOSTILE)
        await m.edit(room.channel_id, first.channel_seq, HOSTILE + " (second)")
        await m.reply(room.channel_id, first.channel_seq, HOSTILE)
        last = await m.send(room.channel_id, HOSTILE)

        async def archived() -> str | None:
            text = await cli(platform, "--as", alice, "history", room.name)
            return text if f"[{last.channel_seq:>5}]" in text and "(edited)" in text else None

        outputs = {
            "history": await eventually(archived, "mallory's messages in the archive's history"),
            "chat": await cli(platform, "--as", alice, "chat", room.name, stdin=""),
            "older": await cli(platform, "--as", alice, "older", room.name, str(last.channel_seq + 1)),
            "thread": await cli(platform, "--as", alice, "thread", room.name, str(first.channel_seq)),
            "versions": await cli(platform, "--as", alice, "versions", room.name, str(first.channel_seq)),
        }
    for command, output in outputs.items():
        assert HOSTILE_SHOWN in output, (command, output)
        for line in output.split("\n"):  # not splitlines(): it would break at \r and \u2028 too
            assert ACTED_ON.search(line) is None, (command, line)
            assert not line.startswith("[    9]"), (command, output)  # no forged line
    assert outputs["versions"].splitlines() == [f"v1: {HOSTILE_SHOWN}", f"v2: {HOSTILE_SHOWN} (second)"]

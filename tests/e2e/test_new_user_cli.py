"""What a new user trips over in the CLI (issue 20), each through the command as typed: at a
pseudo-terminal where the behaviour depends on one (prompts, Ctrl-C), else as a process."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import subprocess
import sys
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

import grpc
import pytest

from parley_client import ParleyClient, ParleyError
from parley_testing.platform import TEST_DEFAULTS, RunningPlatform
from parley_testing.stack import PASSWORD
from parley_testing.terminal import CTRL_C, CTRL_D
from parley_testing.waiting import wait_until

pytestmark = pytest.mark.e2e

EX_INTERRUPTED = 130


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def cli(platform: RunningPlatform, *args: str, stdin: str | None = None) -> str:
    return platform.cli(*args, stdin=stdin).stdout


def new_user(platform: RunningPlatform, prefix: str) -> str:
    """A user registered and logged in with the CLI."""
    name = unique(prefix)
    cli(platform, "register", name, stdin=PASSWORD + "\n")
    cli(platform, "login", name, stdin=PASSWORD + "\n")
    return name


def run(
    argv: Sequence[str], env: Mapping[str, str], *, cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """A command as a person runs it in a shell, its output captured."""
    return subprocess.run(
        list(argv), env=dict(env), cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )


def run_as_printed(platform: RunningPlatform, hint: str, *more: str) -> str:
    """The command a `-- ... : parley ... --` hint line names, run exactly as printed."""
    words = shlex.split(hint.strip("- ").partition(": ")[2])
    assert words[0] == "parley"
    done = run([sys.executable, "-m", "parley_cli", *words[1:], *more], {**os.environ, **TEST_DEFAULTS, **platform.env})
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_command_without_as_names_the_saved_logins(platform: RunningPlatform) -> None:
    name = new_user(platform, "who")
    refused = platform.cli("history", "general", check=False)
    assert refused.returncode == 1
    assert "name the user with --as USER" in refused.stderr
    assert name.casefold() in refused.stderr.split("logged in here: ")[1]


def interrupted_at(platform: RunningPlatform, prompt: str, *args: str) -> str:
    """Ctrl-C once at the command's first `prompt`: it ends at once, says so, exits 130."""
    terminal = platform.terminal(*args)
    try:
        terminal.expect(prompt)
        terminal.send(CTRL_C)
        code = terminal.wait(timeout=30)
    finally:
        terminal.kill()
    assert code == EX_INTERRUPTED, terminal.output
    assert "interrupted" in terminal.output
    assert "no password given" not in terminal.output
    assert "Traceback" not in terminal.output
    return terminal.output


@pytest.mark.parametrize("command", ["admin create-user", "register", "login"])
async def test_ctrl_c_at_a_password_prompt_ends_the_command_and_creates_nothing(
    platform: RunningPlatform, command: str
) -> None:
    name = unique("ctrlc")
    await asyncio.to_thread(interrupted_at, platform, f"password for {name}: ", *command.split(), name)
    missing = platform.cli("admin", "show", name, check=False)
    assert "NOT_FOUND" in missing.stderr  # nothing was sent: no account


def test_ctrl_c_at_the_password_change_and_erasure_prompts(platform: RunningPlatform) -> None:
    name = new_user(platform, "ctrlc")
    interrupted_at(platform, f"current password for {name}: ", "--as", name, "password")
    said = interrupted_at(platform, "to confirm: ", "--as", name, "erase")
    assert "not erased" not in said
    cli(platform, "login", name, stdin=PASSWORD + "\n")  # the password is unchanged


async def test_history_and_chat_open_at_the_newest_messages(platform: RunningPlatform) -> None:
    name = await asyncio.to_thread(new_user, platform, "pager")
    channel = unique("busy")
    await asyncio.to_thread(cli, platform, "--as", name, "create-channel", channel)
    async with platform.client() as client:
        await client.login(name, PASSWORD)
        [joined] = [c for c in await client.my_channels() if c.name == channel]
        for n in range(1, 26):
            await client.send(joined.channel_id, f"line {n}")

    history = await asyncio.to_thread(cli, platform, "--as", name, "history", channel, "--limit", "10")
    numbers = [int(line.split("]")[0].strip("[ ")) for line in history.splitlines() if line.startswith("[")]
    assert numbers == list(range(16, 26))
    as_run = f"parley --data-dir {shlex.quote(str(platform.data_dir))} --as {name}"
    assert history.splitlines()[-1] == f"-- older messages: {as_run} older {channel} 16 --"
    older = await asyncio.to_thread(run_as_printed, platform, history.splitlines()[-1], "--limit", "10")
    assert "line 6" in older
    assert "line 15" in older
    assert "line 16" not in older
    forward = await asyncio.to_thread(cli, platform, "--as", name, "history", channel, "--after", "20")
    assert "line 21" in forward
    assert "line 25" in forward
    assert "line 20" not in forward

    terminal = platform.terminal("--as", name, "chat", channel)
    try:
        shown = await asyncio.to_thread(terminal.expect, "-- live;")
        terminal.send(CTRL_D)
        assert await asyncio.to_thread(terminal.wait, 30) == 0
    finally:
        terminal.kill()
    lines = shown.splitlines()
    assert f"-- older messages: {as_run} older {channel} 6 --" in lines
    numbers = [int(line.split("]")[0].strip("[ ")) for line in lines if line.startswith("[")]
    assert numbers == list(range(6, 26))


def test_two_channels_with_one_name_are_never_picked_silently(platform: RunningPlatform) -> None:
    name = new_user(platform, "dup")
    channel = unique("design")
    first = cli(platform, "--as", name, "create-channel", channel).split()[-1]
    again = platform.cli("--as", name, "create-channel", channel, check=False)
    assert again.returncode == 1
    assert f"you already have #{channel} ({first})" in again.stderr
    assert "--allow-duplicate" in again.stderr
    second = cli(platform, "--as", name, "create-channel", channel, "--allow-duplicate").split()[-1]
    assert second != first
    for command in (("history", channel), ("send", channel, "which one?")):
        refused = platform.cli("--as", name, *command, check=False)
        assert refused.returncode == 1
        assert refused.stdout == ""
        assert f"2 of your channels are named #{channel}" in refused.stderr
        assert first in refused.stderr
        assert second in refused.stderr
    assert "sent #1" in cli(platform, "--as", name, "send", second, "by id")


def test_join_by_name_when_one_channel_has_it(platform: RunningPlatform) -> None:
    owner, member = new_user(platform, "own"), new_user(platform, "mem")
    general, twice, hidden = unique("general"), unique("twice"), unique("hidden")
    general_id = cli(platform, "--as", owner, "create-channel", general).split()[-1]
    assert "joined #" + general in cli(platform, "--as", member, "join", general)
    assert general_id in cli(platform, "--as", member, "channels")

    ids = [cli(platform, "--as", owner, "create-channel", twice, "--allow-duplicate").split()[-1] for _ in range(2)]
    ambiguous = platform.cli("--as", member, "join", twice, check=False)
    assert "FAILED_PRECONDITION" in ambiguous.stderr
    assert all(i in ambiguous.stderr for i in ids)
    cli(platform, "--as", owner, "create-channel", "--private", hidden)
    private = platform.cli("--as", member, "join", hidden, check=False)
    assert "NOT_FOUND" in private.stderr  # a private channel is not found by name without an invitation
    assert "Traceback" not in private.stderr + ambiguous.stderr


def test_repeat_invites_and_joins_say_already_a_member(platform: RunningPlatform) -> None:
    owner, member = new_user(platform, "own"), new_user(platform, "mem")
    room = unique("general")
    room_id = cli(platform, "--as", owner, "create-channel", room).split()[-1]
    assert cli(platform, "--as", member, "join", room) == f"joined #{room} (2 members)\n"
    assert cli(platform, "--as", member, "join", room_id) == f"already a member of #{room} (2 members)\n"
    assert cli(platform, "--as", owner, "invite", room, member) == (
        f"invite: {member} is already a member of #{room} (2 members)\n"
    )


def test_a_channel_left_is_refused_with_the_channels_one_can_name(platform: RunningPlatform) -> None:
    bob, alice = new_user(platform, "bob"), new_user(platform, "alice")
    room, kept = unique("general"), unique("design")
    cli(platform, "--as", alice, "create-channel", room)
    cli(platform, "--as", bob, "join", room)
    cli(platform, "--as", bob, "create-channel", kept)
    cli(platform, "--as", bob, "dm", alice)
    cli(platform, "--as", bob, "leave", room)

    refused = platform.cli("--as", bob, "send", room, "x", check=False)

    assert refused.returncode == 1
    [line] = refused.stderr.splitlines()
    assert line.startswith(f"error: '{room}' is not one of your channels (yours: #{kept});")
    assert "#direct" not in line  # a direct conversation has no name to give
    assert "a private channel needs an invitation" in line
    nobody = platform.cli("--as", unique("carol"), "channels", check=False)
    assert nobody.stderr.startswith("error: carol")


def test_the_cli_finds_the_platform_parley_up_started_from_any_folder(
    platform: RunningPlatform, tmp_path: Path
) -> None:
    name = new_user(platform, "away")
    environ = {k: v for k, v in os.environ.items() if k != "PARLEY_DATA_DIR"}
    # No .parley in tmp_path: the CLI must find the platform's folder by itself.
    result = run([sys.executable, "-m", "parley_cli", "--as", name, "channels"], environ, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "you are in no channel yet" in result.stdout


def test_react_takes_one_emoji_or_its_shortcode(platform: RunningPlatform) -> None:
    name = new_user(platform, "react")
    channel = unique("fun")
    cli(platform, "--as", name, "create-channel", channel)
    cli(platform, "--as", name, "send", channel, "hello")
    assert cli(platform, "--as", name, "react", channel, "1", ":thumbs_up:").strip() == (
        "reacted :thumbs_up: to #1; reactions now: 👍x1"
    )
    added = cli(platform, "--as", name, "react", channel, "1", "🎉").strip()
    assert added.startswith("reacted 🎉 to #1 (1 so far); reactions now: ")
    assert sorted(added.split(": ")[-1].split()) == sorted(["👍x1", "🎉x1"])
    for text in ("notanemoji", ":notanemoji:", "👍👍"):
        refused = platform.cli("--as", name, "react", channel, "1", text, check=False)
        assert refused.returncode == 1
        assert "(INVALID_ARGUMENT)" in refused.stderr
        assert "or its :shortcode: such as :thumbs_up:" in refused.stderr
    assert ":shortcode:" in platform.cli("react", "--help").stdout


async def sdk_user(platform: RunningPlatform, name: str) -> ParleyClient:
    client = platform.client()
    await client.login(name, PASSWORD)
    return client


async def test_people_are_found_by_name_when_they_share_a_channel(platform: RunningPlatform) -> None:
    alice, bob, carol = [await asyncio.to_thread(new_user, platform, p) for p in ("alice", "bob", "carol")]
    boss = unique("boss")
    await asyncio.to_thread(cli, platform, "admin", "create-user", boss, "--role", "owner", stdin=PASSWORD + "\n")
    channel = unique("shared")
    channel_id = (await asyncio.to_thread(cli, platform, "--as", alice, "create-channel", channel)).split()[-1]
    await asyncio.to_thread(cli, platform, "--as", bob, "join", channel_id)
    async with await sdk_user(platform, alice) as a, await sdk_user(platform, boss) as owner:
        bob_id = await a.find_user(bob.upper())  # names compare ignoring case
        assert (await a.user_names([bob_id]))[bob_id] == bob
        assert await a.find_users([bob, carol, "nobody-at-all"]) == {bob: bob_id}  # carol shares no channel
        with pytest.raises(ParleyError) as hidden:
            await a.find_user(carol)
        assert hidden.value.code == grpc.StatusCode.NOT_FOUND
        assert "shares a channel with you" in hidden.value.message
        # An owner reads the directory: every account by name.
        assert set(await owner.find_users([carol, bob])) == {carol, bob}


async def test_member_actions_on_an_unknown_user_are_not_found_and_not_shown(platform: RunningPlatform) -> None:
    alice, bob = [await asyncio.to_thread(new_user, platform, p) for p in ("mod", "who")]
    channel = unique("moderated")
    channel_id = (await asyncio.to_thread(cli, platform, "--as", alice, "create-channel", channel)).split()[-1]
    await asyncio.to_thread(cli, platform, "--as", bob, "join", channel)
    async with await sdk_user(platform, alice) as a:
        live = a.subscribe([channel_id])
        await live.ready()
        for action in ("invite", "kick", "ban", "unban"):
            for who in ("nosuchuser", uuid.uuid4().hex):
                refused = await asyncio.to_thread(platform.cli, "--as", alice, action, channel, who, check=False)
                assert refused.returncode == 1, refused.stdout
                assert "done" not in refused.stdout
                assert "(NOT_FOUND)" in refused.stderr
        # By name, for someone who shares the channel: done.
        kicked = await asyncio.to_thread(cli, platform, "--as", alice, "kick", channel, bob)
        assert "kick: done" in kicked
        await a.send(channel_id, "after")
        seen = []
        async for event in live.events():
            seen.append(event)
            if event.kind == "message" and event.message.body == "after":
                break
        live.cancel()
    changes = [e.event.membership for e in seen if e.kind == "membership"]
    assert [c.change for c in changes] == ["kicked"], changes  # the refused actions left no trace


EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def example(platform: RunningPlatform, name: str, *users: str, **env: str) -> subprocess.CompletedProcess[str]:
    """An examples/ script as the README says to run it, against this platform."""
    environ = {**os.environ, "PARLEY_DATA_DIR": str(platform.data_dir), "PARLEY_PASSWORD": PASSWORD, **env}
    return run([sys.executable, str(EXAMPLES / name), *users], environ, timeout=120)


def run_example(platform: RunningPlatform, name: str, *users: str, **env: str) -> str:
    result = example(platform, name, *users, **env)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_hello_says_a_wrong_password_in_one_line(platform: RunningPlatform) -> None:
    alice = new_user(platform, "alice")
    result = example(platform, "hello.py", alice, PARLEY_PASSWORD="not-" + PASSWORD)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [result.stderr.strip()]  # one line, no traceback
    assert result.stderr.startswith(f"{alice}: ")
    assert "UNAUTHENTICATED" in result.stderr


@pytest.mark.parametrize("name", ["hello.py", "conversations.py", "e2ee.py"])
def test_an_example_without_a_platform_says_where_it_looked_in_one_line(tmp_path: Path, name: str) -> None:
    environ = {**os.environ, "PARLEY_DATA_DIR": str(tmp_path), "PARLEY_PASSWORD": PASSWORD}
    result = run([sys.executable, str(EXAMPLES / name), "alice", "bob"], environ)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [result.stderr.strip()]  # one line, no traceback
    assert f"no platform is running in {tmp_path} (no client.json there)" in result.stderr
    assert "(UNAVAILABLE)" in result.stderr


def test_the_readme_examples_run_as_printed(platform: RunningPlatform) -> None:
    alice, bob = new_user(platform, "alice"), new_user(platform, "bob")

    hello = run_example(platform, "hello.py", alice)
    assert hello.strip().endswith(f"{alice}: hello from {alice}")
    assert f"hello from {alice}" in cli(platform, "--as", alice, "history", "hello")

    # One password each, as docs/sdk.md says; $PARLEY_PASSWORD (wrong here) only when one is not given.
    own = {"PARLEY_PASSWORD_" + "".join(c if c.isalnum() else "_" for c in u.upper()): PASSWORD for u in (alice, bob)}
    talk = run_example(platform, "conversations.py", alice, bob, PARLEY_PASSWORD="not-" + PASSWORD, **own).splitlines()
    bob_id = talk[0].rsplit(" ", 1)[-1]
    assert "shares a channel" not in talk[0]
    assert len(bob_id) == 32
    assert "#1: lunch?" in talk
    assert "#2: 12:30 at the usual place" in talk
    assert talk[-1] == "reaction: 👍"
    assert "membership: invited" in talk

    for run in range(2):  # a second run is the same two devices, kept in the data folder
        secret = run_example(platform, "e2ee.py", alice, bob).splitlines()
        assert secret[0].startswith("the server holds: megolm.v1:"), (run, secret)
        assert secret[1] == "bob reads: the merger closes friday"


def test_an_auditor_sees_each_security_records_kind_source_and_detail(platform: RunningPlatform) -> None:
    auditor, target = unique("auditor"), new_user(platform, "audited")
    cli(platform, "admin", "create-user", auditor, "--role", "security-auditor", stdin=PASSWORD + "\n")
    cli(platform, "login", auditor, stdin=PASSWORD + "\n")
    wrong = platform.cli("login", target, stdin="not-the-password\n", check=False)
    assert wrong.returncode == 1
    cli(platform, "admin", "disable", target, "--reason", "left\nFAKE LINE \x1b[31mred")

    def trail() -> str | None:
        out = cli(platform, "--as", auditor, "audit", "query", "--target", target)
        return out if "account_disabled" in out and "login_failed" in out else None

    wait_until(lambda: trail() is not None, timeout=60, what="the security records in the auditor's query")
    out = trail() or ""
    [failed] = [line for line in out.splitlines() if "login_failed" in line]
    assert failed.split("SecurityEventRecorded", 1)[1].split("  ")[-1].startswith("login_failed from ipv4:127.0.0.1")
    [disabled] = [line for line in out.splitlines() if "account_disabled" in line]
    assert "left\\nFAKE LINE \\x1b[31mred" in disabled  # shown, never interpreted
    assert "FAKE LINE" not in out.replace(disabled, "")
    records = [
        json.loads(line)
        for line in cli(platform, "--as", auditor, "audit", "query", "--target", target, "--json").splitlines()
    ]
    kinds = {r["security"]["kind"]: r["security"] for r in records if "security" in r}
    assert kinds["login_failed"]["source"] == "ipv4:127.0.0.1"
    assert kinds["account_disabled"]["detail"] == "left\nFAKE LINE \x1b[31mred"


async def test_chat_moves_the_read_marker_and_names_an_invitation(platform: RunningPlatform) -> None:
    reader = await asyncio.to_thread(new_user, platform, "reader")
    owner_name = await asyncio.to_thread(new_user, platform, "owner")
    room = unique("room")
    room_id = (await asyncio.to_thread(cli, platform, "--as", owner_name, "create-channel", room)).split()[-1]
    await asyncio.to_thread(cli, platform, "--as", reader, "join", room_id)
    for n in range(1, 4):
        await asyncio.to_thread(cli, platform, "--as", owner_name, "send", room_id, f"line {n}")
    # The chat starts before this process opens a gRPC channel (a fork then would break gRPC).
    terminal = platform.terminal("--as", reader, "chat", room)
    try:
        await asyncio.to_thread(terminal.expect, "-- live;")
        async with platform.client() as owner:
            await owner.login(owner_name, PASSWORD)
            reader_id = (await owner.find_users([reader]))[reader]
            # The channel's events from its start: the reader's marker, whenever it moved.
            watching = owner.subscribe([room_id], resume={room_id: 0})
            await watching.ready()
            marks = (
                e.event.read_marker.channel_seq
                async for e in watching.events()
                if e.kind == "read_marker" and e.event.read_marker.user_id == reader_id
            )
            # What the chat shows is read, as in the web client: the marker moves for all to see.
            assert await asyncio.wait_for(anext(marks), 60) == 3
            await owner.send(room_id, "line 4")
            await asyncio.to_thread(terminal.expect, "line 4")
            assert await asyncio.wait_for(anext(marks), 60) == 4
            watching.cancel()

            # An invitation elsewhere is named: the channel, who invited, how to accept.
            secret = await owner.create_channel(unique("secret"), private=True)
            await owner.invite(secret.channel_id, reader_id)
            shown = await asyncio.to_thread(terminal.expect, f"invited you to #{secret.name}")
            assert f"-- {owner_name} invited you to #{secret.name}: parley" in shown
            assert f"join {secret.channel_id} --" in shown
        terminal.send(CTRL_D)
        assert await asyncio.to_thread(terminal.wait, 30) == 0
    finally:
        terminal.kill()

    listed = await asyncio.to_thread(cli, platform, "--as", reader, "invitations")
    assert f"{secret.channel_id}  #{secret.name} (private)  invited by {owner_name}" in listed
    assert "declined the invitation" in await asyncio.to_thread(cli, platform, "--as", reader, "decline", secret.name)
    assert "no pending invitations" in await asyncio.to_thread(cli, platform, "--as", reader, "invitations")

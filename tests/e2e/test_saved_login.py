"""A login lasts as long as its session, not as long as one access token: the CLI and the client
renew the token before it expires, one-shot commands run side by side on one saved login, and a
live stream whose token expired is opened again with the new one, nothing missed.

The platform here issues 5-second access tokens (PARLEY_AUTH_ACCESS_TOKEN_SECONDS), so expiry
comes within the test; the waits are on the clock passing a token's expiry, with a deadline."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from parley_client import ParleyError
from parley_testing.platform import TEST_DEFAULTS, RunningPlatform, platform_in
from parley_testing.stack import PASSWORD
from parley_testing.waiting import eventually, until

pytestmark = pytest.mark.e2e

TOKEN_SECONDS = 5


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningPlatform]:
    running = platform_in(tmp_path_factory.mktemp("platform"), PARLEY_AUTH_ACCESS_TOKEN_SECONDS=str(TOKEN_SECONDS))
    yield from running.served()


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def saved(platform: RunningPlatform, username: str) -> dict[str, object]:
    body: dict[str, object] = json.loads((platform.data_dir / "cli" / f"{username}.json").read_text())
    return body


async def past(unix_time: float) -> None:
    await until(lambda: time.time() > unix_time + 1, f"the clock past {unix_time}", timeout=TOKEN_SECONDS * 4)


async def test_the_cli_renews_a_saved_login_and_side_by_side_commands_share_it(platform: RunningPlatform) -> None:
    alice = unique("alice")
    async with await platform.new_user(alice) as a:
        room = await a.create_channel(unique("room"))
        await asyncio.to_thread(platform.cli, "login", alice, stdin=PASSWORD + "\n")
        first = saved(platform, alice)
        await past(float(first["expires_at_unix"]))  # type: ignore[arg-type]

        # Four commands at once on the expired login: one renews it, the others take the renewal
        # from the file. Each presenting the same refresh token would be taken for a stolen one,
        # and auth would end the session.
        runs = await asyncio.gather(
            *(asyncio.to_thread(platform.cli, "--as", alice, "send", room.name, f"hello {n}") for n in range(4))
        )
        assert all(r.returncode == 0 for r in runs), [r.stderr for r in runs]
        renewed = saved(platform, alice)
        assert renewed["access_token"] != first["access_token"]
        assert renewed["refresh_token"] != first["refresh_token"]
        assert float(renewed["expires_at_unix"]) > float(first["expires_at_unix"])  # type: ignore[arg-type]

        # The session lives on: after the next expiry too, and the old token is refused.
        await past(float(renewed["expires_at_unix"]))  # type: ignore[arg-type]
        channels = await asyncio.to_thread(platform.cli, "--as", alice, "channels")
        assert room.name in channels.stdout
        stale = platform.client()
        async with stale:
            stale.use_token(str(first["access_token"]), str(first["user_id"]))
            with pytest.raises(ParleyError) as refused:
                await stale.my_channels()
        assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED


async def test_an_ended_session_says_to_log_in_again(platform: RunningPlatform) -> None:
    bob = unique("bob")
    async with await platform.new_user(bob) as b:
        await asyncio.to_thread(platform.cli, "login", bob, stdin=PASSWORD + "\n")
        login = saved(platform, bob)
        await b.change_password(PASSWORD, PASSWORD + "-new")  # signs out bob's other sessions
        await past(float(login["expires_at_unix"]))  # type: ignore[arg-type]
        refused = await asyncio.to_thread(platform.cli, "--as", bob, "channels", check=False)
    assert refused.returncode != 0
    assert f"the saved login of {bob} ended" in refused.stderr
    assert f"run `parley login {bob}`" in refused.stderr
    assert "Traceback" not in refused.stderr


async def test_a_live_stream_outlives_its_access_token(platform: RunningPlatform) -> None:
    alice, bob = unique("alice"), unique("bob")
    async with await platform.new_user(alice) as a, await platform.new_user(bob) as b:
        a.keep_logged_in()
        b.keep_logged_in()
        room = await a.create_channel(unique("room"))
        await b.join_channel(room.channel_id)
        seen: list[str] = []

        async def follow() -> None:
            async for event in a.live([room.channel_id], resume={room.channel_id: 0}):  # from its first event
                if event.kind == "message":
                    seen.append(event.message.body)

        following = asyncio.create_task(follow())
        try:
            await b.send(room.channel_id, "before")
            await until(lambda: seen == ["before"] or following.done(), "the first message live")
            assert seen == ["before"]
            expired = a.expires_at
            assert expired is not None
            await past(expired)  # the stream's token has expired: the gateway ended that stream
            await b.send(room.channel_id, "after")
            await until(lambda: len(seen) == 2 or following.done(), "the message after the token expired")
            assert seen == ["before", "after"]  # each once: resumed where the ended stream stopped
        finally:
            following.cancel()


async def test_cli_chat_keeps_its_live_stream_and_sends_past_expiry(platform: RunningPlatform) -> None:
    alice, bob = unique("alice"), unique("bob")
    async with await platform.new_user(alice) as a, await platform.new_user(bob) as b:
        a.keep_logged_in()
        room = await a.create_channel(unique("room"))
        await b.join_channel(room.channel_id)
        await asyncio.to_thread(platform.cli, "login", bob, stdin=PASSWORD + "\n")
        out = platform.data_dir.parent / f"chat-{bob}.out"
        with open(out, "wb") as sink:
            chat = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "parley_cli",
                    "--data-dir",
                    str(platform.data_dir),
                    "--as",
                    bob,
                    "chat",
                    room.name,
                ],
                stdin=subprocess.PIPE,
                stdout=sink,
                stderr=subprocess.STDOUT,
                env={**os.environ, **TEST_DEFAULTS, **platform.env},
            )
        assert chat.stdin is not None
        try:
            await eventually(lambda: shown(out, "-- live;"), "bob's chat live")
            await past(float(saved(platform, bob)["expires_at_unix"]))  # type: ignore[arg-type]
            await a.send(room.channel_id, "alice after expiry")
            await eventually(lambda: shown(out, "alice after expiry"), "alice's message in bob's chat")
            # The stream its expired token ended was opened again, and the chat says it is live again.
            await eventually(lambda: shown(out, "-- live again --"), "bob's chat live again")
            printed = out.read_text(errors="replace")
            assert printed.index("-- reconnecting --") < printed.index("-- live again --")
            chat.stdin.write(b"bob after expiry\n")
            chat.stdin.flush()

            async def bobs_line() -> str | None:
                page = await a.history(room.channel_id)
                return "sent" if "bob after expiry" in [m.body for m in page.messages] else None

            await eventually(bobs_line, "bob's typed line in the history")
            assert "not sent" not in out.read_text()
            assert chat.poll() is None  # still chatting
        finally:
            chat.stdin.close()
            await asyncio.to_thread(chat.wait, 30)


async def shown(out: Path, text: str) -> str | None:
    return text if text in out.read_text(errors="replace") else None

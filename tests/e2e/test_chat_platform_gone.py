"""`parley chat` when the platform stops answering: Ctrl-D leaves while a send waits, and a line
typed after Ctrl-C on `make run` is "not sent", with how to start the platform, not a maybe.
The tests run in this order on the module's platform: the last one stops it."""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from parley_testing.platform import RunningPlatform
from parley_testing.stack import PASSWORD
from parley_testing.terminal import CTRL_D, Terminal

pytestmark = pytest.mark.e2e


def chatting(platform: RunningPlatform) -> Terminal:
    """A new user at `parley chat` in a channel of their own, live."""
    name, channel = f"gone{uuid.uuid4().hex[:8]}", f"room{uuid.uuid4().hex[:8]}"
    platform.cli("register", name, stdin=PASSWORD + "\n")
    platform.cli("login", name, stdin=PASSWORD + "\n")
    platform.cli("--as", name, "create-channel", channel)
    terminal = platform.terminal("--as", name, "chat", channel)
    terminal.expect("-- live;")
    return terminal


@contextmanager
def gateway_frozen(platform: RunningPlatform) -> Iterator[None]:
    """Every gateway instance stopped (SIGSTOP): calls reach it and get no answer."""
    instances = platform.service("gateway")["instances"]
    assert isinstance(instances, list)
    assert instances
    pids = [int(i["pid"]) for i in instances]
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


def test_ctrl_d_leaves_while_a_send_waits_for_its_answer(platform: RunningPlatform) -> None:
    terminal = chatting(platform)
    try:
        with gateway_frozen(platform):
            terminal.type("anyone there?")  # retried with its key for 30 s: the outcome is unknown
            terminal.send(CTRL_D)
            shown = terminal.expect("-- leaving before the platform answered the last line")
            assert terminal.wait(30) == 0
    finally:
        terminal.kill()
    assert "not confirmed" not in shown


def test_a_line_typed_after_the_platform_stopped_is_not_sent_and_says_how_to_start_it(
    platform: RunningPlatform,
) -> None:
    terminal = chatting(platform)
    try:
        assert platform.stop() == 0  # Ctrl-C on `make run`
        terminal.type("hello?")
        start = f"`parley --data-dir {platform.data_dir} up` (or `make run DATA_DIR={platform.data_dir}`)"
        shown = terminal.expect(f"not sent: the platform is not running (start it with {start})")
        terminal.send(CTRL_D)
        assert terminal.wait(30) == 0
    finally:
        terminal.kill()
    assert "may have been sent" not in shown
    assert "idempotency_key" not in shown  # an SDK parameter a chat user cannot pass

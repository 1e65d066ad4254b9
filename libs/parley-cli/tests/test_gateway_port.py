"""Where `parley up` puts the gateway and the web app when the port it would take is busy: it says
so, in one line."""

from __future__ import annotations

import contextlib
import io
import json
import shlex
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from parley_cli import platform_doors
from parley_cli.platform import Platform
from parley_cli.platform_doors import claim_web_port, open_client_port
from parley_cli.state import STATE_FILE


@contextlib.contextmanager
def held_port() -> Iterator[int]:
    """A port another program holds (a plain listener, as any other server holds one). The defaults
    themselves may be anyone's on a shared machine, so a test holds a port of its own as one."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


@contextlib.contextmanager
def web_port_claimed(tmp_path: Path, asked: int | None) -> Iterator[tuple[int, io.StringIO]]:
    """The port `parley up` claims for the web app (`--web-port asked`), and what it said about it."""
    out = io.StringIO()
    platform = Platform(tmp_path, out=out)
    platform.web_claim = claim_web_port(tmp_path, asked, platform.say)
    try:
        yield platform.web_claim.getsockname()[1], out
    finally:
        platform.web_claim.close()


async def test_a_busy_default_port_is_named_with_the_port_taken_instead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with held_port() as busy:
        monkeypatch.setattr(platform_doors, "DEFAULT_GATEWAY_PORT", busy)
        out = io.StringIO()
        door = await open_client_port(tmp_path, None, Platform(tmp_path, out=out).say)
        try:
            taken = int(door.address.rsplit(":", 1)[-1])
            assert taken != busy
            assert out.getvalue().splitlines() == [
                f"[parley] gateway port {busy} (the default) is busy; the gateway took port {taken} instead"
            ]
        finally:
            await door.stop()


def test_a_busy_web_port_is_named_with_the_port_taken_instead(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with held_port() as busy:
        monkeypatch.setattr(platform_doors, "DEFAULT_WEB_PORT", busy)
        with web_port_claimed(tmp_path, None) as (taken, out):
            assert taken != busy
            assert out.getvalue().splitlines() == [
                f"[parley] web port {busy} (the default) is busy; the web app took port {taken} instead"
            ]


def test_the_web_port_is_the_last_runs_on_the_next_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A start that found the default busy took another port; the next start, the default free
    again, keeps the port the last run had (a browser's bookmark finds the app), and says nothing."""
    with held_port() as default:
        monkeypatch.setattr(platform_doors, "DEFAULT_WEB_PORT", default)
        first = Platform(tmp_path, out=io.StringIO())
        first.web_claim = claim_web_port(tmp_path, None, first.say)
        taken = first.web_claim.getsockname()[1]
        first.agent = SimpleNamespace(instances_of=lambda service: [])  # type: ignore[assignment]  # no service
        (tmp_path / STATE_FILE).write_text(json.dumps(first._state()))
        first.web_claim.close()
    out = io.StringIO()
    second = Platform(tmp_path, out=out)
    second._write_starting_state()  # as a start does: the last run's ports kept for this one
    second.web_claim = claim_web_port(tmp_path, None, second.say)
    try:
        assert second.web_claim.getsockname()[1] == taken
        assert out.getvalue() == ""
    finally:
        second.web_claim.close()


def test_the_web_port_asked_for_is_taken(tmp_path: Path) -> None:
    """`parley up --web-port N` (`make run WEB_PORT=N`): a free port asked for is the web app's, with no word."""
    with socket.socket() as probe:  # a port free a moment ago, as a person picks one
        probe.bind(("127.0.0.1", 0))
        asked = probe.getsockname()[1]
    with web_port_claimed(tmp_path, asked) as (taken, out):
        assert taken == asked
        assert out.getvalue() == ""


def test_a_busy_web_port_asked_for_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with held_port() as asked_port, held_port() as default_port:
        monkeypatch.setattr(platform_doors, "DEFAULT_WEB_PORT", default_port)
        with web_port_claimed(tmp_path, asked_port) as (taken, out):
            assert taken not in (asked_port, default_port)
            assert out.getvalue().splitlines() == [
                f"[parley] web ports {asked_port} (asked for) and {default_port} (the default) are busy; "
                f"the web app took port {taken} instead"
            ]


@pytest.mark.parametrize(
    ("make_args", "expected"),
    [
        (["GATEWAY_PORT=7444"], ["--gateway-port", "7444"]),
        (["WEB_PORT=8444"], ["--web-port", "8444"]),
        (["GATEWAY_PORT=7444", "WEB_PORT=8444"], ["--gateway-port", "7444", "--web-port", "8444"]),
        ([], []),
    ],
)
def test_make_run_passes_the_ports_asked_for(tmp_path: Path, make_args: list[str], expected: list[str]) -> None:
    """`make run GATEWAY_PORT=N WEB_PORT=M` is `parley up --gateway-port N --web-port M` (a dry run:
    nothing is started)."""
    root = Path(__file__).resolve().parents[3]
    dry = subprocess.run(
        ["make", "-n", "-C", str(root), "run", f"DATA_DIR={tmp_path}", "DATABASE=", *make_args],
        capture_output=True,
        text=True,
        check=True,
    )
    command = shlex.split(dry.stdout.replace("\\\n", " ").split(f"--data-dir {tmp_path} up", 1)[1].splitlines()[0])
    assert command == expected

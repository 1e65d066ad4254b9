"""`parley up`'s own warnings while a service or nats-server is down: one line per outage, with
its prefix, and how often it repeated once the outage is over (parley_cli.outage_log)."""

from __future__ import annotations

import io
import logging
from pathlib import Path

from parley_cli.outage_log import QUIET_S, OncePerOutage
from parley_cli.platform import Platform
from parley_testing.clock import ManualClock


def test_a_warning_repeated_during_an_outage_is_shown_once_then_counted() -> None:
    out = io.StringIO()
    clock = ManualClock()
    handler = OncePerOutage(Platform(Path("unused"), out=out).say, clock)
    log = logging.getLogger("parley_agent.front_door.test")
    log.propagate = False
    log.addHandler(handler)
    try:
        for _ in range(5):
            log.warning("front door %s: no live instance for a new connection", "messaging")
            clock.now += 1
        log.error("NATS error: %s", "[Errno 111] Connect call failed ('127.0.0.1', 4222)")
        log.error("NATS error: %s", "[Errno 111] Connect call failed ('127.0.0.1', 4223)")
        handler.close_quiet_outages()  # not quiet long enough yet: nothing more
        assert out.getvalue().splitlines() == [
            "[parley] front door messaging: no live instance for a new connection",
            "[parley] NATS error: [Errno 111] Connect call failed ('127.0.0.1', 4222)",
        ]

        clock.now += QUIET_S
        handler.close_quiet_outages()  # the outage is over: its count
        log.warning("front door %s: no live instance for a new connection", "messaging")  # a new outage
        assert out.getvalue().splitlines()[2:] == [
            "[parley] front door messaging: no live instance for a new connection "
            f"(and 4 more like it; none for {QUIET_S:.0f} s now)",
            "[parley] NATS error: [Errno 111] Connect call failed ('127.0.0.1', 4222) "
            f"(and 1 more like it; none for {QUIET_S:.0f} s now)",
            "[parley] front door messaging: no live instance for a new connection",
        ]
    finally:
        log.removeHandler(handler)


def test_info_lines_are_not_parley_ups_to_show() -> None:
    out = io.StringIO()
    handler = OncePerOutage(Platform(Path("unused"), out=out).say, ManualClock())
    log = logging.getLogger("parley_cli.test_outage_log.info")
    log.propagate = False
    log.setLevel(logging.INFO)
    log.addHandler(handler)
    try:
        log.info("routine")
    finally:
        log.removeHandler(handler)
    assert out.getvalue() == ""

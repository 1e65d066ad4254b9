"""`make load` against a platform that would refuse its users' registrations stops at once,
with one line saying how to start the platform for load tests, instead of a traceback per user."""

from __future__ import annotations

from pathlib import Path

from parley_testing.locust import short_locust_run
from parley_testing.stack import Stack

LOCUSTFILE = Path(__file__).resolve().parents[2] / "loadtests" / "locustfile.py"


async def test_load_against_closed_registration_exits_with_one_line(closed_stack: Stack, tmp_path: Path) -> None:
    code, out = await short_locust_run(closed_stack, tmp_path, locustfile=LOCUSTFILE, run_time="20s")
    assert code != 0, out
    assert "Traceback" not in out, out
    assert "start it for load tests with `PARLEY_REGISTRATION=open" in out, out
    assert out.count("does not let load-test users register") == 1, out
    # No user was started, so no request was made or counted.
    assert "Register" not in out, out

"""Every Locust request event as one JSON line, for a test that audits a load run afterwards.

Locust's CSV keeps aggregates only. A test that must show nothing was lost needs each
acknowledged send (its channel and message id), and one that compares p99 before and during a
roll-out needs each request's start time. `PARLEY_LOAD_REQUEST_LOG=FILE` makes the locustfile
append one line per request event to FILE; the worker processes of `--processes` share it
(lines are short and appended whole).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

ENV_VAR = "PARLEY_LOAD_REQUEST_LOG"


class RequestLog:
    """A Locust `request` event listener that writes each event to a file."""

    def __init__(self, path: Path) -> None:
        self._file: TextIO = path.open("a", buffering=1)  # line-buffered: one write per line

    def record(
        self,
        *,
        name: str,
        response_time: float,
        exception: BaseException | None = None,
        context: dict[str, Any] | None = None,
        **_: Any,
    ) -> None:
        line = {
            "started_at": time.time() - response_time / 1000.0,
            "name": name,
            "ms": response_time,
            "error": None if exception is None else _describe(exception),
            **(context or {}),
        }
        self._file.write(json.dumps(line) + "\n")

    def close(self) -> None:
        self._file.close()


@dataclass(frozen=True)
class LoggedRequest:
    started_at: float  # wall clock, seconds
    name: str
    ms: float
    error: str | None
    channel_id: str = ""
    message_id: str = ""
    channel_seq: int = 0


def read_request_log(path: Path) -> list[LoggedRequest]:
    """The requests of a run in the order they were written; a torn last line is skipped."""
    requests = []
    for raw in path.read_text().splitlines():
        try:
            fields = json.loads(raw)
        except json.JSONDecodeError:
            continue  # a worker killed mid-write; every complete line is still read
        requests.append(LoggedRequest(**fields))
    return requests


def _describe(exception: BaseException) -> str:
    code = getattr(exception, "code", None)
    details = getattr(exception, "details", None)
    if callable(code) and callable(details):  # a grpc.RpcError
        return f"{code()}: {details()}"
    return repr(exception)[:300]

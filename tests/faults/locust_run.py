"""Locust's headless run of loadtests/locustfile.py against a platform on loopback, as a process.

The run writes its request log (parley_load.request_log) beside Locust's CSV report, so a test
can follow it while it runs (how many users logged in, how many sends were acknowledged) and
audit every request once it has stopped.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from parley_load.request_log import ENV_VAR, LoggedRequest, read_request_log

from parley_testing.processes import stop_process

LOCUSTFILE = Path(__file__).resolve().parents[2] / "loadtests" / "locustfile.py"
STOP_TIMEOUT_S = 60.0
# Locust lets a stopping user finish the task it is in for this long, so no call is cut off.
USER_STOP_TIMEOUT_S = "30"


@dataclass
class LocustRun:
    process: subprocess.Popen[bytes]
    folder: Path

    @classmethod
    def start(cls, *, gateway_address: str, ca_cert: Path, users: int, spawn_rate: float, folder: Path) -> LocustRun:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "requests.jsonl").unlink(missing_ok=True)  # the log appends: start this run's afresh
        env = {
            **os.environ,
            "PARLEY_CA_CERT": str(ca_cert),
            ENV_VAR: str(folder / "requests.jsonl"),
            "PARLEY_DATA_DIR": str(folder),  # no client.json there: --host and the CA say where
        }
        with (folder / "locust.out").open("wb") as out:
            process = subprocess.Popen(
                [
                    *(sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless"),
                    *("--users", str(users), "--spawn-rate", str(spawn_rate), "--run-time", "1h"),
                    *("--host", gateway_address, "--stop-timeout", USER_STOP_TIMEOUT_S),
                    *("--csv", str(folder / "parley"), "--only-summary"),
                ],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        return cls(process=process, folder=folder)

    def requests(self) -> list[LoggedRequest]:
        path = self.folder / "requests.jsonl"
        return read_request_log(path) if path.exists() else []

    def output(self) -> str:
        return (self.folder / "locust.out").read_text(errors="replace")

    def running(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"locust exited early with {self.process.returncode}:\n{self.output()[-3000:]}")
        return True

    def stop(self) -> int:
        """Stop the run; Locust's exit code is 1 when any request failed.

        SIGTERM, not SIGINT: Locust shuts down on SIGTERM at once (writing its CSV, not its HTML
        report), while after SIGINT a run whose users hold live gRPC streams did not exit here.
        """
        return stop_process(self.process, signal.SIGTERM, timeout=STOP_TIMEOUT_S)

"""The platform started for a benchmark exactly as `make run` starts it, in a throw-away folder."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from parley_core.platform_state import READY_LINE

START_TIMEOUT_S = 180.0


@dataclass
class BenchPlatform:
    data_dir: Path
    env: dict[str, str] = field(default_factory=dict)  # more settings for this platform (a bench phase's)
    up_args: tuple[str, ...] = ()  # more arguments of `parley up`, e.g. ("--instances", "messaging=2")
    process: asyncio.subprocess.Process | None = None

    @property
    def output_path(self) -> Path:
        return self.data_dir.parent / "parley-up.out"

    async def start(self) -> None:
        self.output_path.parent.mkdir(parents=True, exist_ok=True)
        with self.output_path.open("wb") as out:
            self.process = await asyncio.create_subprocess_exec(
                # Another checkout's interpreter (its own editable installs) runs that checkout's
                # platform: `--compare PARLEY_BENCH_PYTHON=/old/.venv/bin/python,/new/.venv/bin/python`.
                self.env.get("PARLEY_BENCH_PYTHON", sys.executable),
                "-m",
                "parley_cli",
                "--data-dir",
                str(self.data_dir),
                "up",
                *self.up_args,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                env=self.environment(),
            )
        deadline = asyncio.get_running_loop().time() + START_TIMEOUT_S
        delay = 0.05
        while READY_LINE not in self.output_path.read_text(errors="replace"):
            if self.process.returncode is not None:
                raise RuntimeError(f"`parley up` exited:\n{self.output_path.read_text(errors='replace')}")
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"platform not up after {START_TIMEOUT_S:.0f}s; see {self.output_path}")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)

    def environment(self) -> dict[str, str]:
        """What `parley up` runs with. The benchmark registers its users (`make run` defaults to
        admin-created accounts), all from one address, so auth's per-address registration budget
        is lifted. `parley up` remembers its folder for the CLI in $XDG_CONFIG_HOME: a folder of
        the bench's own, so a bench run does not replace the folder the user's `parley` finds."""
        return {
            **os.environ,
            "XDG_CONFIG_HOME": str(self.data_dir.parent / "config"),
            "PARLEY_TRACE_EXPORTER": "none",
            "PARLEY_REGISTRATION": "open",
            "PARLEY_AUTH_REGISTRATIONS_PER_SOURCE_PER_HOUR": "1000000",
            **self.env,
        }

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(self.process.wait(), 60)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()

    @property
    def gateway_address(self) -> str:
        return str(json.loads((self.data_dir / "client.json").read_text())["gateway_address"])

    @property
    def ca_cert(self) -> bytes:
        return Path(json.loads((self.data_dir / "client.json").read_text())["ca_cert"]).read_bytes()

    def state(self) -> dict[str, Any]:
        """What `parley up` says runs: each service's instances and pids, nats-server's pids."""
        state: dict[str, Any] = json.loads((self.data_dir / "platform.json").read_text())
        return state

    def pid_of(self, service: str) -> int:
        return int(self.state()["services"][service]["pid"])

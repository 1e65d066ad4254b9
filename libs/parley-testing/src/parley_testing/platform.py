"""The whole platform as a user starts it (`parley up`, what `make run` runs), for end-to-end tests."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from nats.aio.client import Client

from parley_client import ParleyClient
from parley_core.grpc_channel import secure_channel
from parley_core.nats_connect import connect_nats
from parley_core.natsconf import NATS_PASSWORDS_FILE
from parley_core.net import free_port
from parley_core.pki import ensure_pki
from parley_core.platform_state import READY_LINE, STATE_FILE
from parley_core.topology import PLATFORM_USER
from parley_testing.processes import stop_process
from parley_testing.stack import PASSWORD
from parley_testing.terminal import Terminal
from parley_testing.waiting import wait_until

# Test platforms let anyone register (`make run` defaults to admin-created accounts), so tests
# can call `client.register`; a test that wants another mode sets PARLEY_REGISTRATION in `env`.
# Every test user registers from 127.0.0.1, so auth's per-address registration budget is lifted.
TEST_DEFAULTS = {"PARLEY_REGISTRATION": "open", "PARLEY_AUTH_REGISTRATIONS_PER_SOURCE_PER_HOUR": "1000000"}
# A host's first `parley up` after a source change also builds and installs the changed services'
# base releases before starting them (about a minute for all five on a loaded 2-core host).
START_TIMEOUT_S = 240.0
STOP_TIMEOUT_S = 60.0


@dataclass
class RunningPlatform:
    data_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    runs: int = 0
    up_args: tuple[str, ...] = ()  # extra `parley up` options, e.g. ("--gateway-port", "12345")
    # What runs every `parley` command of this host, e.g. Namespace.command (a host of its own).
    within: Callable[[Sequence[str]], list[str]] = list

    @property
    def output_path(self) -> Path:
        return self.data_dir.parent / f"parley-up-{self.runs}.out"

    def output(self) -> str:
        return self.output_path.read_text(errors="replace") if self.output_path.exists() else ""

    def cli(self, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run the `parley` command as a user would, against this platform."""
        return subprocess.run(
            self.within([sys.executable, "-m", "parley_cli", "--data-dir", str(self.data_dir), *args]),
            input=stdin,
            capture_output=True,
            text=True,
            env={**os.environ, **TEST_DEFAULTS, **self.env},
            timeout=60,
            check=check,
        )

    def cli_until(self, *args: str, shows: str, timeout: float = 60.0) -> str:
        """Run `parley ARGS` again until its output shows `shows` (what it reads catches up); its output."""
        seen: list[subprocess.CompletedProcess[str]] = []

        def shown() -> bool:
            seen.append(self.cli(*args, check=False))
            return shows in seen[-1].stdout

        try:
            wait_until(shown, timeout=timeout, what=f"`parley {' '.join(args)}` to show {shows!r}", interval=0.5)
        except TimeoutError as exc:
            printed = f"{seen[-1].stdout}\n{seen[-1].stderr}" if seen else ""
            raise AssertionError(f"{exc}; it last printed:\n{printed}") from exc
        return seen[-1].stdout

    def terminal(self, *args: str, env: Mapping[str, str] | None = None) -> Terminal:
        """The `parley` command at a pseudo-terminal of its own, as a user types it (prompts, Ctrl-C)."""
        argv = [sys.executable, "-m", "parley_cli", "--data-dir", str(self.data_dir), *args]
        return Terminal(argv, env={**os.environ, **TEST_DEFAULTS, **self.env, **(env or {})})

    def start(self) -> None:
        self.runs += 1
        out = open(self.output_path, "wb")  # noqa: SIM115 - handed to the child process
        self.process = subprocess.Popen(
            self.within([sys.executable, "-m", "parley_cli", "--data-dir", str(self.data_dir), "up", *self.up_args]),
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **TEST_DEFAULTS, **self.env},
            # Like `make run` in a terminal: a process group that Ctrl-C reaches as a whole.
            start_new_session=True,
        )
        out.close()

        def ready() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"`parley up` exited with {self.process.returncode}:\n{self.output()}")
            return READY_LINE in self.output()

        wait_until(ready, timeout=START_TIMEOUT_S, what="`parley up` to report every service up")

    def served(self) -> Iterator[RunningPlatform]:
        """Started, then killed once the caller is done (or its start failed half-way): a fixture's
        `yield from platform.served()`."""
        try:
            self.start()
            yield self
        finally:
            self.kill()

    def stop(self) -> int:
        """Ctrl-C in the terminal, as a user stops `make run`: SIGINT to the whole process group."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGINT)
        code = self.process.wait(timeout=STOP_TIMEOUT_S)
        self.process = None
        return code

    def kill(self) -> None:
        if self.process is not None:
            stop_process(self.process, signal.SIGINT, timeout=STOP_TIMEOUT_S)
        self.process = None

    def client(self) -> ParleyClient:
        """A client of this platform's gateway, trusting its CA."""
        return ParleyClient.connect(self.gateway_address, ca_cert=self.ca_cert.read_bytes())

    async def new_user(self, name: str) -> ParleyClient:
        """A client registered and logged in as `name` (registration is open on test platforms)."""
        client = self.client()
        await client.register(name, PASSWORD)
        await client.login(name, PASSWORD)
        return client

    def service_channel(self, service: str, identity: str = PLATFORM_USER) -> grpc.aio.Channel:
        """Mutual TLS straight to `service` as `identity` (the platform identity: the operator's tools)."""
        pki = ensure_pki(self.data_dir / "pki", [identity])
        return secure_channel(pki, identity=identity, address=str(self.service(service)["address"]), peer=service)

    def gateway_channel(self) -> grpc.aio.Channel:
        """The gateway's gRPC API as a client reaches it (TLS, trusting the platform's CA)."""
        credentials = grpc.ssl_channel_credentials(root_certificates=self.ca_cert.read_bytes())
        return grpc.aio.secure_channel(
            self.gateway_address, credentials, options=[("grpc.ssl_target_name_override", "gateway")]
        )

    async def nats(self, user: str = PLATFORM_USER, *, name: str = "", **options: Any) -> Client:
        """A NATS connection to this platform as `user`, with its password from the data folder."""
        passwords = json.loads((self.data_dir / NATS_PASSWORDS_FILE).read_text())
        return await connect_nats(
            url=str(self.state["nats_url"]),
            user=user,
            password=passwords[user],
            ca_cert=self.data_dir / "pki" / "ca.crt",
            name=name or f"test-{user}",
            **options,
        )

    @property
    def state(self) -> dict[str, object]:
        return dict(json.loads((self.data_dir / STATE_FILE).read_text()))

    def service(self, name: str) -> dict[str, object]:
        services = self.state["services"]
        assert isinstance(services, dict)
        return dict(services[name])

    @property
    def gateway_address(self) -> str:
        return str(json.loads((self.data_dir / "client.json").read_text())["gateway_address"])

    @property
    def web_url(self) -> str:
        """The gateway's address for browsers (the web app and the Connect API)."""
        return str(json.loads((self.data_dir / "client.json").read_text())["web_url"])

    @property
    def ca_cert(self) -> Path:
        return Path(json.loads((self.data_dir / "client.json").read_text())["ca_cert"])

    def log(self, service: str) -> str:
        return (self.data_dir / "logs" / f"{service}.log").read_text(errors="replace")


JOINED_LINE = "joined the fleet"


class JoinedHost:
    """Another host of the fleet as an operator starts it: `parley host join BUNDLE` in its own folder."""

    def __init__(
        self,
        data_dir: Path,
        bundle: Path,
        env: Mapping[str, str] | None = None,
        args: Sequence[str] = (),
        within: Callable[[Sequence[str]], list[str]] = list,
    ) -> None:
        self.data_dir = data_dir
        self.output_path = data_dir.parent / "join.out"
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        out = open(self.output_path, "wb")  # noqa: SIM115 - handed to the child process
        argv = [sys.executable, "-m", "parley_cli", "--data-dir", str(data_dir), "host", "join", str(bundle), *args]
        self.process = subprocess.Popen(
            within(argv),  # `ip netns exec` execs the command: its pid is the agent's
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **TEST_DEFAULTS, **(env or {})},
            start_new_session=True,
        )
        out.close()

    @classmethod
    def join(
        cls,
        platform: RunningPlatform,
        root: Path,
        name: str,
        services: str,
        env: Mapping[str, str] | None = None,
        *,
        args: Sequence[str] = (),
        add_args: Sequence[str] = (),
        within: Callable[[Sequence[str]], list[str]] = list,
    ) -> JoinedHost:
        """The host's bundle issued on `platform` (`parley host add`), then the host joined and serving
        (`args`: more of `host join`'s options, `add_args` of `host add`'s, e.g. --nats-node)."""
        platform.cli("host", "add", name, "--services", services, "--out", str(root / "bundle"), *add_args)
        host = cls(root / "data", root / "bundle", env, args, within)
        try:
            host.wait_joined()
        except BaseException:
            host.kill()
            raise
        return host

    def output(self) -> str:
        return self.output_path.read_text(errors="replace")

    def wait_joined(self) -> None:
        def joined() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(f"`parley host join` exited with {self.process.returncode}:\n{self.output()}")
            return JOINED_LINE in self.output()

        wait_until(joined, timeout=START_TIMEOUT_S, what=f"{self.data_dir} to join the fleet")

    @property
    def gateway_address(self) -> str:
        return str(json.loads((self.data_dir / "client.json").read_text())["gateway_address"])

    @property
    def nats(self) -> dict[str, object]:
        """The NATS node this host runs (`host add --nats-node`): name, url, route, pid."""
        node = json.loads((self.data_dir / "host.json").read_text())["nats"]
        assert isinstance(node, dict)
        return node

    def instance_pids(self) -> list[int]:
        """Its service instances and its NATS node, if it runs one (each in a session of its own)."""
        state = json.loads((self.data_dir / "host.json").read_text())
        node = [int(state["nats"]["pid"])] if state.get("nats", {}).get("pid") else []
        return [*(int(i["pid"]) for i in state.get("instances", [])), *node]

    def kill_9(self) -> list[int]:
        """The host lost: SIGKILL to its agent and every instance it runs (each in a session of its own)."""
        pids = [self.process.pid, *self.instance_pids()]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait(timeout=STOP_TIMEOUT_S)
        return pids

    def stop(self) -> int:
        """Ctrl-C: the agent drains its instances and exits."""
        os.killpg(self.process.pid, signal.SIGINT)
        return self.process.wait(timeout=STOP_TIMEOUT_S)

    def kill(self) -> None:
        """Whatever is left of it, gone (a test's clean-up)."""
        if self.process.poll() is None:
            self.stop()
        with contextlib.suppress(OSError, ValueError):
            for pid in self.instance_pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def platform_in(root: Path, **env: str) -> RunningPlatform:
    """The test platform in ``root``, traces on; ``env`` adds or overrides settings."""
    # A free port of its own rather than the default 7443, which every platform on a shared
    # machine (other test runs, a `make run`) would race for.
    return RunningPlatform(
        data_dir=root / "data",
        env={"PARLEY_TRACE_EXPORTER": "console", "PARLEY_REGISTRATION": "open", **env},
        up_args=("--gateway-port", str(free_port())),
    )


def gateway_budgets(calls_per_second: int) -> dict[str, str]:
    """The gateway's rate limits per user and per address (and their bursts) raised to
    `calls_per_second`, for a test that calls faster than people do: settings for `platform_in`."""
    return {
        f"PARLEY_GATEWAY_{who}_{what}": str(calls_per_second)
        for who in ("USER", "SOURCE")
        for what in ("RATE", "BURST")
    }


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningPlatform]:
    """One platform per test module, started exactly as `make run` starts it, traces on.

    Self-registration is open here (`make run` defaults to admin-created accounts) so tests
    can call `client.register`.
    """
    running = platform_in(tmp_path_factory.mktemp("platform"))
    yield from running.served()

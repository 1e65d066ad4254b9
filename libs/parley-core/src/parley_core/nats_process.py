"""A nats-server child process with a known lifecycle, for the platform runner and tests."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from parley_core.natsconf import nats_server_binary
from parley_core.net import wait_for_port

START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
_LOG_TAIL_BYTES = 4000
RELOAD_TIMEOUT_S = 10.0
_RELOADED = "Reloaded server configuration"
_RELOAD_FAILED = "Failed to reload"


class NatsServerProcess:
    """Run ``nats-server -c <config>`` and know for sure when it is listening or gone."""

    def __init__(self, *, config_path: Path, host: str, port: int, log_path: Path) -> None:
        self.config_path = config_path
        self.host = host
        self.port = port
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tls://{host}:{self.port}"

    @property
    def pid(self) -> int:
        return self._running().pid

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    async def start(self) -> None:
        """Launch the server and return once its client port accepts connections.

        Fails fast with the log tail if the server exits first (bad config, port taken),
        instead of waiting out the whole timeout.
        """
        if self._process is not None:
            raise RuntimeError("nats-server was already started by this object")
        self._process = self._spawn()
        ready = asyncio.ensure_future(wait_for_port(self.host, self.port, START_TIMEOUT_S))
        exited = asyncio.ensure_future(self._wait_exit())
        try:
            await asyncio.wait({ready, exited}, return_when=asyncio.FIRST_COMPLETED)
            if exited.done():
                raise RuntimeError(
                    f"nats-server (config {self.config_path}) exited with code {exited.result()}"
                    f" before listening on {self.host}:{self.port}; log tail:\n{self._log_tail()}"
                )
            if (error := ready.exception()) is not None:
                raise RuntimeError(
                    f"nats-server (config {self.config_path}) did not listen on {self.host}:{self.port}"
                    f" within {START_TIMEOUT_S:.0f}s; log tail:\n{self._log_tail()}"
                ) from error
        except BaseException:
            await self.stop()
            raise
        finally:
            for task in (ready, exited):
                task.cancel()
            await asyncio.gather(ready, exited, return_exceptions=True)

    async def restart(self) -> None:
        """Start it again after its process ended (a crash): the same config, port and store."""
        if self.running:
            raise RuntimeError("nats-server is still running")
        self._close_log()
        self._process = None
        await self.start()

    async def reload(self, timeout: float = RELOAD_TIMEOUT_S) -> None:
        """Apply its config file again without a restart (SIGHUP): connections stay, the accounts'
        imports and users' permissions change (the consumer guard's quarantine). Returns once the
        server's log says it reloaded; raises with its log's reason if it refused the file."""
        process = self._running()
        before = self._log_size()
        process.send_signal(signal.SIGHUP)
        loop = asyncio.get_running_loop()
        give_up = loop.time() + timeout
        while True:
            news = self._log_since(before)
            if _RELOADED in news:
                return
            if _RELOAD_FAILED in news or loop.time() > give_up:
                raise RuntimeError(f"nats-server did not reload {self.config_path}: {news.strip()[-1000:]}")
            await asyncio.sleep(0.02)  # the log is the only answer a reload gives

    def _log_size(self) -> int:
        with contextlib.suppress(OSError):
            return self.log_path.stat().st_size
        return 0

    def _log_since(self, offset: int) -> str:
        with contextlib.suppress(OSError), self.log_path.open("rb") as log:
            log.seek(offset)
            return log.read().decode(errors="replace")
        return ""

    async def wait_exit(self) -> int:
        """The exit code, once the process has ended (a crash, a kill, a stop)."""
        return await self._wait_exit()

    async def stop(self) -> None:
        """SIGTERM for a clean JetStream shutdown, SIGKILL if it takes more than 10 s."""
        process = self._process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self._wait_exit(), STOP_TIMEOUT_S)
            except TimeoutError:
                process.kill()
                await self._wait_exit()
        self._close_log()

    def kill(self) -> None:
        """SIGKILL without a clean shutdown, to simulate a crash in fault tests."""
        process = self._running()
        process.kill()
        process.wait()
        self._close_log()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def _spawn(self) -> subprocess.Popen[bytes]:
        """Fork and exec only; the exit is awaited through ``_wait_exit``, never blocking."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        return subprocess.Popen(
            [nats_server_binary(), "-c", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            # Its own session: a terminal's Ctrl-C must not stop the broker under draining services.
            start_new_session=True,
        )

    def _running(self) -> subprocess.Popen[bytes]:
        if self._process is None:
            raise RuntimeError("nats-server has not been started")
        return self._process

    async def _wait_exit(self) -> int:
        """Wait for the child without blocking the event loop and without a polling loop.

        On Linux a pidfd becomes readable when the process exits, which works on whichever
        event loop is running; elsewhere a worker thread waits instead.
        """
        process = self._running()
        if process.poll() is not None:
            return process.returncode
        pidfd_open = getattr(os, "pidfd_open", None)
        if pidfd_open is None:
            return await asyncio.to_thread(process.wait)
        loop = asyncio.get_running_loop()
        pidfd: int = pidfd_open(process.pid)
        exited: asyncio.Future[None] = loop.create_future()

        def on_readable() -> None:
            if not exited.done():
                exited.set_result(None)

        loop.add_reader(pidfd, on_readable)
        try:
            await exited
        finally:
            loop.remove_reader(pidfd)
            os.close(pidfd)
        return process.wait()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def _log_tail(self) -> str:
        with contextlib.suppress(OSError), self.log_path.open("rb") as log:
            log.seek(0, 2)
            size = log.tell()
            log.seek(max(size - _LOG_TAIL_BYTES, 0))
            return log.read().decode(errors="replace")
        return "(log unreadable)"

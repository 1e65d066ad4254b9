"""A private PostgreSQL server for tests that must stop and start their database.

The shared server on 127.0.0.1:5432 belongs to everyone on the machine, so a test that kills
its database gets one of its own: `initdb` into a fresh folder and `postgres` on a free port,
run as the `postgres` system user because PostgreSQL refuses to run as root. Where the
binaries or that user are missing, the fixture skips and says so. `postgres_server` makes one
that listens elsewhere: on a network namespace's address (a database host of its own), trusting
the networks it names.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from parley_core.net import free_port

__all__ = ["PrivatePostgres", "postgres_missing", "postgres_server", "private_postgres"]

START_TIMEOUT_S = 60.0
_SEARCH = ("/usr/local/bin", "/usr/lib/postgresql/17/bin", "/usr/lib/postgresql/16/bin", "/usr/lib/postgresql/15/bin")


def _binary(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path=os.pathsep.join(_SEARCH))


@dataclass
class PrivatePostgres:
    folder: Path
    port: int
    postgres: str
    user: str | None
    process: subprocess.Popen[bytes] | None = None
    listen: str = "127.0.0.1"
    # What runs the server, e.g. Namespace.command (a database host of its own).
    within: Callable[[Sequence[str]], list[str]] = list

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@{self.listen}:{self.port}/postgres"

    def _as_owner(self, argv: list[str]) -> list[str]:
        """Run as the data folder's owner. setpriv execs in place (no fork, unlike runuser or
        Popen(user=), which forks a gRPC-threaded parent), so the postmaster is our own child."""
        if not self.user:
            return argv
        return ["setpriv", f"--reuid={self.user}", f"--regid={self.user}", "--init-groups", "--", *argv]

    def start(self) -> None:
        log = (self.folder / "postgres.log").open("ab")
        self.process = subprocess.Popen(
            self.within(
                self._as_owner(
                    [
                        self.postgres,
                        "-D",
                        str(self.folder / "data"),
                        "-p",
                        str(self.port),
                        "-h",
                        self.listen,
                        "-k",
                        str(self.folder),
                        "-c",
                        "fsync=on",
                    ]
                )
            ),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self._wait_ready()

    def _wait_ready(self) -> None:
        import psycopg

        deadline = time.monotonic() + START_TIMEOUT_S
        delay = 0.05
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"postgres exited: {(self.folder / 'postgres.log').read_text(errors='replace')}")
            try:
                with psycopg.connect(host=self.listen, port=self.port, user="postgres", dbname="postgres"):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(delay)  # polling the server's readiness with a deadline
            delay = min(delay * 2, 0.5)

    def kill(self) -> None:
        """SIGKILL the postmaster and its backends: a crash, not a shutdown."""
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        self.process = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # fast shutdown
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None


def postgres_missing() -> str:
    """Empty when a private server can be started here, else why not (a skip reason)."""
    if _binary("initdb") is None or _binary("postgres") is None:
        return "PostgreSQL binaries (initdb, postgres) not found: no private database to start"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root without a `postgres` system user: PostgreSQL refuses to run as root"
        if shutil.which("setpriv") is None:
            return "running as root without `setpriv`: cannot start PostgreSQL as the postgres user"
    return ""


@contextlib.contextmanager
def postgres_server(
    *,
    listen: str = "127.0.0.1",
    port: int = 0,
    within: Callable[[Sequence[str]], list[str]] = list,
    trusted: Sequence[str] = (),
) -> Iterator[PrivatePostgres]:
    """A fresh server (initdb, then postgres as its own child) on `listen`, stopped and removed on
    exit. Trust (no password) for loopback and for the networks in `trusted` (CIDRs): a test's
    own server, reachable only on the test's own addresses. Call postgres_missing() first."""
    initdb, postgres = _binary("initdb"), _binary("postgres")
    if initdb is None or postgres is None:
        raise RuntimeError(postgres_missing())
    user = "postgres" if os.geteuid() == 0 else None
    folder = Path(tempfile.mkdtemp(prefix="parley-pg-"))
    try:
        if user:
            entry = pwd.getpwnam(user)
            os.chown(folder, entry.pw_uid, entry.pw_gid)
        server = PrivatePostgres(
            folder=folder, port=port or free_port(), postgres=postgres, user=user, listen=listen, within=within
        )
        subprocess.run(
            server._as_owner([initdb, "-D", str(folder / "data"), "-U", "postgres", "--auth=trust", "-E", "UTF8"]),
            check=True,
            capture_output=True,
            cwd=folder,
        )
        with (folder / "data" / "pg_hba.conf").open("a") as hba:
            hba.writelines(f"host all all {network} trust\n" for network in trusted)
        server.start()
        try:
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    if reason := postgres_missing():
        pytest.skip(reason)
    with postgres_server() as server:
        yield server

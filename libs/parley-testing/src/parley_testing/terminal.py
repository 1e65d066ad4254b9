"""A command run at a pseudo-terminal, as a user types at one: prompts, Ctrl-C, echo.

`pty.fork` gives the child a terminal of its own (session leader, the pty as its controlling
terminal), so getpass reads /dev/tty, `isatty()` is true and Ctrl-C (byte 0x03) reaches it as
SIGINT through the terminal's line discipline, exactly as from a keyboard.
"""

from __future__ import annotations

import os
import pty
import select
import signal
import time
from collections.abc import Mapping, Sequence

CTRL_C = b"\x03"
CTRL_D = b"\x04"


class Terminal:
    """A child process on a pseudo-terminal; `output` is everything it wrote so far."""

    def __init__(self, argv: Sequence[str], *, env: Mapping[str, str], cwd: str | None = None) -> None:
        pid, fd = pty.fork()
        if pid == 0:  # the child: become the command (never returns)
            try:
                if cwd is not None:
                    os.chdir(cwd)
                os.execve(argv[0], list(argv), dict(env))  # noqa: S606 - our own command, no shell
            finally:
                os._exit(127)
        self.pid, self.fd = pid, fd
        self._raw = b""
        self.returncode: int | None = None

    @property
    def output(self) -> str:
        return self._raw.decode(errors="replace").replace("\r\n", "\n")

    def _read(self, timeout: float) -> bool | None:
        """Read what is there within `timeout`: True if something came, None if nothing did, False
        once the terminal is closed (every process that had it open is gone)."""
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return None
        try:
            chunk = os.read(self.fd, 4096)
        except OSError:  # EIO
            return False
        self._raw += chunk
        return bool(chunk)

    def expect(self, text: str, timeout: float = 60) -> str:
        """Wait until the output shows `text` (a prompt, a line); the output so far."""
        deadline = time.monotonic() + timeout
        while text not in self.output:
            if time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} within {timeout}s; the terminal shows:\n{self.output}")
            if self._read(0.2) is False and text not in self.output:
                raise AssertionError(f"the command ended without showing {text!r}:\n{self.output}")
        return self.output

    def send(self, data: bytes) -> None:
        os.write(self.fd, data)

    def type(self, line: str) -> None:
        self.send(line.encode() + b"\r")

    def wait(self, timeout: float = 60) -> int:
        """The exit code (128 + N for a signal) once the child ended, reading its last output."""
        deadline = time.monotonic() + timeout
        while self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
                if self.returncode < 0:
                    self.returncode = 128 - self.returncode
                break
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"still running after {timeout}s; the terminal shows:\n{self.output}")
            self._read(0.2)
        while self._read(0.05):  # what it wrote just before it ended
            pass
        os.close(self.fd)
        return self.returncode

    def kill(self) -> None:
        if self.returncode is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
            self.returncode = -9

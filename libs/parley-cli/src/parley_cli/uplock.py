"""One `parley up` per data folder: an advisory lock held for the life of the platform.

Two platforms on one folder would start two nats-servers and two storages on the same files.
The lock is an flock on a file in the data folder: the kernel drops it when `parley up` exits,
however it exits, so a crash never leaves a stale lock behind. The file names the holder's pid
so the refusal can say which process to stop.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_FILE = "parley-up.lock"


class PlatformAlreadyRunning(RuntimeError):
    pass


class UpLock:
    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise PlatformAlreadyRunning naming the pid that holds it."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise PlatformAlreadyRunning(
                f"a platform is already running on {self.path.parent} (`parley up`, pid {holder}); "
                f"stop it first (Ctrl-C in its terminal, or kill -INT {holder})"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

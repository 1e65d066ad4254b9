"""Owner-only files and directories for secrets: private keys, passwords, store keys.

Secrets are written atomically so a crash mid-write never leaves a truncated key behind that a
later start would mistake for a valid one.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` (and its parents) and restrict it to the owner, even if it existed."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(PRIVATE_DIR_MODE)
    return path


def write_private_file(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically; the file is never readable by others.

    The temporary file is created in the same directory so ``os.replace`` is a rename on one
    file system, and it is created 0600 so the secret is never exposed, not even briefly.
    """
    tmp = _private_temporary(path, data)
    try:
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def create_private_file(path: Path, data: bytes) -> bool:
    """Like write_private_file, but a file already at ``path`` is kept (another process may be
    creating the same secret at this moment); True when this call created it."""
    tmp = _private_temporary(path, data)
    try:
        os.link(tmp, path)  # fails if path exists: never half written, never replaced
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)
    return True


def _private_temporary(path: Path, data: bytes) -> Path:
    """``data`` in a new 0600 file beside ``path``, on disk."""
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as tmp:
            os.fchmod(tmp.fileno(), PRIVATE_FILE_MODE)
            tmp.write(data)
            tmp.flush()
            os.fsync(tmp.fileno())
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return Path(tmp_name)

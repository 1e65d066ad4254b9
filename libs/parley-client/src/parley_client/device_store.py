"""Keeps an end-to-end encryption device across restarts: one JSON file, secrets pickled.

vodozemac pickles (encrypts) the Olm account and every session with a 32-byte pickle key; the
file and the key file are created readable by their owner only (0600). A client that restarts
with the same store is the same device: the keys others shared with it still open its
messages, and no new device appears in the directory.
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
from pathlib import Path
from typing import Any

from parley_client.e2ee import DeviceCalls, E2eeDevice

PICKLE_KEY_BYTES = 32


def write_private(path: Path, data: bytes) -> None:
    """Replace `path` atomically; the file is 0600 from its first byte."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # mkstemp: 0600
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class DeviceStore:
    """`<path>` holds the device, `<path>.key` its pickle key (made on first save)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.key_path = path.with_name(path.name + ".key")

    def exists(self) -> bool:
        return self.path.exists()

    def _pickle_key(self) -> bytes:
        if not self.key_path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_private(self.key_path, secrets.token_bytes(PICKLE_KEY_BYTES))
        key = self.key_path.read_bytes()
        if len(key) != PICKLE_KEY_BYTES:
            raise ValueError(f"{self.key_path} is not a {PICKLE_KEY_BYTES}-byte pickle key")
        return key

    def load(self, client: DeviceCalls) -> E2eeDevice:
        state: dict[str, Any] = json.loads(self.path.read_text())
        if client.user_id and state["user_id"] != client.user_id:
            raise ValueError(f"{self.path} holds a device of another user")
        device = E2eeDevice.from_state(client, state, self._pickle_key())
        device.changed = lambda: self.save(device)
        return device

    def delete(self) -> None:
        """Forget the device here (after the server removed it): the next use makes a new one."""
        self.path.unlink(missing_ok=True)
        self.key_path.unlink(missing_ok=True)

    def save(self, device: E2eeDevice) -> None:
        state = device.to_state(self._pickle_key())
        write_private(self.path, json.dumps(state).encode())

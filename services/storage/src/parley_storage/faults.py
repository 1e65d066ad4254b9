"""A test-only fault point: hold a batch transaction open so a test can kill -9 storage inside it.

Enabled only by PARLEY_STORAGE_PAUSE_IN_BATCH=<folder> (never set by `parley up`). A test arms it
by writing a stream name into ``<folder>/arm``; the next batch of that stream stops after its
first event is written, before the consumer's position and the commit, writes ``<folder>/paused``
(pid, stream, sequence) and waits until ``<folder>/resume`` exists (or the process is killed).
It fires once: with ``paused`` present it never stops again, also not after a restart.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

ARM, PAUSED, RESUME = "arm", "paused", "resume"
POLL_S = 0.05


@dataclass(frozen=True)
class PauseInBatch:
    folder: Path

    def __call__(self, stream: str, stream_seq: int) -> None:
        armed, paused = self.folder / ARM, self.folder / PAUSED
        if paused.exists() or not armed.exists() or armed.read_text().strip() != stream:
            return
        paused.write_text(json.dumps({"pid": os.getpid(), "stream": stream, "stream_seq": stream_seq}))
        while not (self.folder / RESUME).exists():
            time.sleep(POLL_S)  # a worker thread inside an open transaction, waiting to be killed

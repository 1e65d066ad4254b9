"""What `parley up` leaves in the data folder for the processes it did not start (the CLI, the
backup tool): platform.json, and whether a process it names still lives."""

from __future__ import annotations

import os

STATE_FILE = "platform.json"
# What `parley up` prints once every service is serving (tests and benchmarks wait for it).
READY_LINE = "all services are up"


def process_alive(pid: object) -> bool:
    """Whether a process with this pid exists now (another user's counts: it exists)."""
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

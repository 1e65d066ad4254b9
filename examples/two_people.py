"""What conversations.py and e2ee.py share: the data folder `make run` started, a password for
each of the two people they log in, and how they start."""

import asyncio
import getpass
import os
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path

from parley_client import ParleyError

DATA_DIR = Path(os.environ.get("PARLEY_DATA_DIR", ".parley"))


def password(user: str) -> str:
    """$PARLEY_PASSWORD_ALICE for alice (one each), else $PARLEY_PASSWORD (both), else a prompt."""
    own = "PARLEY_PASSWORD_" + "".join(c if c.isalnum() else "_" for c in user.upper())
    return os.environ.get(own) or os.environ.get("PARLEY_PASSWORD") or getpass.getpass(f"password for {user}: ")


def run(main: Callable[[str, str], Coroutine[object, object, None]]) -> None:
    """`main(alice, bob)` with the two names on the command line (alice and bob if not given)."""
    names = sys.argv[1:3] if len(sys.argv) > 2 else ["alice", "bob"]
    try:
        asyncio.run(main(*names))
    except ParleyError as exc:  # a wrong password, the platform down: one line saying so
        sys.exit(f"{exc.message} ({exc.code.name})")

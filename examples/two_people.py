"""What conversations.py and e2ee.py share: the data folder `make run` started, and a password
for each of the two people they log in."""

import getpass
import os
from pathlib import Path

DATA_DIR = Path(os.environ.get("PARLEY_DATA_DIR", ".parley"))


def password(user: str) -> str:
    """$PARLEY_PASSWORD_ALICE for alice (one each), else $PARLEY_PASSWORD (both), else a prompt."""
    own = "PARLEY_PASSWORD_" + "".join(c if c.isalnum() else "_" for c in user.upper())
    return os.environ.get(own) or os.environ.get("PARLEY_PASSWORD") or getpass.getpass(f"password for {user}: ")

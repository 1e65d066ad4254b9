"""Questions asked at a terminal (passwords, codes, confirmations) that Ctrl-C ends at once.

The commands run inside `asyncio.run`, whose SIGINT handler only cancels the command's task: a
prompt blocked in a read never sees that, so the first Ctrl-C was ignored and Enter then sent an
empty answer. While a prompt waits, Ctrl-C raises here instead (Python's own handler), and the
command ends before anything is sent: `main` prints one line and exits 130.
"""

from __future__ import annotations

import getpass
import signal
import sys
from collections.abc import Callable


class PromptInterrupted(KeyboardInterrupt):
    """Ctrl-C at a prompt: nothing of the command was sent."""


def _asked(read: Callable[[str], str], prompt: str) -> str:
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return read(prompt)
    except KeyboardInterrupt:
        print(file=sys.stderr)  # the terminal shows ^C after the prompt: the line ends there
        raise PromptInterrupted from None
    except EOFError:  # Ctrl-D: no answer
        print(file=sys.stderr)
        return ""
    finally:
        signal.signal(signal.SIGINT, previous)


def ask(prompt: str) -> str:
    """A line typed at the terminal, echoed."""
    return _asked(input, prompt)


def ask_secret(prompt: str) -> str:
    """A line typed at the terminal, not echoed."""
    return _asked(getpass.getpass, prompt)

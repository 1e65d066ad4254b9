"""Questions asked at a terminal (passwords, codes, confirmations) that Ctrl-C ends at once.

The commands run inside `asyncio.run`, whose SIGINT handler only cancels the command's task: a
prompt blocked in a read never sees that. And the kernel may hand SIGINT to any thread (gRPC
keeps threads of its own), so a read blocked in the main thread is not even interrupted. So a
prompt installs Python's own handler and waits for the typed line in short slices: between
slices the main thread runs, the handler raises, and the command ends before anything is sent
(`main` prints one line and exits 130).
"""

from __future__ import annotations

import contextlib
import select
import signal
import sys
import termios
from collections.abc import Iterator
from typing import TextIO

_SLICE_S = 0.1


class PromptInterrupted(KeyboardInterrupt):
    """Ctrl-C at a prompt: nothing of the command was sent."""


@contextlib.contextmanager
def _no_echo(stream: TextIO) -> Iterator[None]:
    """The terminal does not show what is typed (a password) inside the block."""
    if not stream.isatty():
        yield
        return
    fd = stream.fileno()
    before = termios.tcgetattr(fd)
    quiet = list(before)
    quiet[3] &= ~termios.ECHO
    termios.tcsetattr(fd, termios.TCSAFLUSH, quiet)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSAFLUSH, before)


def _read_line(stream: TextIO) -> str:
    """One line, waited for in slices so that a pending Ctrl-C is raised between them (a
    terminal hands over one line per read, so nothing typed ahead waits in Python's buffer)."""
    while stream.isatty() and not select.select([stream], [], [], _SLICE_S)[0]:
        pass
    line = stream.readline()
    if not line:
        raise EOFError
    return line.rstrip("\n")


def _asked(prompt: str, *, secret: bool) -> str:
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        print(prompt, end="", file=sys.stderr, flush=True)
        with _no_echo(sys.stdin) if secret else contextlib.nullcontext():
            answer = _read_line(sys.stdin)
        if secret and sys.stdin.isatty():
            print(file=sys.stderr)  # the Enter the terminal did not echo
        return answer
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
    return _asked(prompt, secret=False)


def ask_secret(prompt: str) -> str:
    """A line typed at the terminal, not echoed."""
    return _asked(prompt, secret=True)

"""Text other people wrote, made safe to print: shown, never interpreted by the terminal.

A message body, a name, a channel topic or a reason comes from someone else. Printed as it is,
a newline in it forges a line that seems to come from another person, an escape sequence
(ANSI CSI, OSC) recolours, moves the cursor, retitles the window or writes to the clipboard,
and a bidi override makes the line read in another order than it is stored (Trojan Source,
CVE-2021-42574). `shown` writes each such character as a visible escape instead, e.g. `\\n`,
`\\x1b`, `\\u202e`; every command passes what others wrote through it.

`TerminalGuard` applies the same function to everything the CLI writes (keeping only the CLI's
own line breaks), so text that reaches the output by a path that forgot `shown` (a server's
error message quoting a name, say) can still move no cursor and reorder no line.
"""

from __future__ import annotations

import re
import sys
from typing import Any, TextIO

# C0 controls (newline, carriage return, tab and ESC among them), DEL and the C1 controls (CSI
# and OSC have one-character forms there); then the line and paragraph separators and the bidi
# controls: the embeddings, overrides and isolates, and the marks (ALM, LRM, RLM).
_CONTROLS_BUT_NEWLINE = "\x00-\x09\x0b-\x1f\x7f-\x9f"
_BREAKS_AND_BIDI = "\u2028\u2029\u202a-\u202e\u2066-\u2069\u061c\u200e\u200f"
_UNSAFE = re.compile(f"[\n{_CONTROLS_BUT_NEWLINE}{_BREAKS_AND_BIDI}]")
_UNSAFE_BUT_NEWLINE = re.compile(f"[{_CONTROLS_BUT_NEWLINE}{_BREAKS_AND_BIDI}]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if named := _NAMED.get(char):
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def shown(text: str) -> str:
    """`text` with every control, line break and bidi control written as a visible escape."""
    return _UNSAFE.sub(_escape, text)


def shown_lines(text: str) -> str:
    """The same, keeping line breaks: for output whose lines are the CLI's own."""
    return _UNSAFE_BUT_NEWLINE.sub(_escape, text)


class TerminalGuard:
    """Wraps an output stream so that everything written to it goes through `shown_lines`."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        return self._stream.write(shown_lines(text))

    def writelines(self, lines: list[str]) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:  # flush, fileno, isatty, encoding...: the stream's
        return getattr(self._stream, name)


def guard_output() -> None:
    """The CLI's standard output and error, guarded (once)."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, TerminalGuard):
            setattr(sys, name, TerminalGuard(stream))

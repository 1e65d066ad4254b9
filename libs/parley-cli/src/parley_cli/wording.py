"""Counts in the CLI's sentences: `1 member`, `2 members`."""

from __future__ import annotations


def counted(count: int, noun: str, plural: str = "") -> str:
    """`count` and the noun in the number it takes; `plural` when it is not the noun plus s."""
    return f"{count} {noun if count == 1 else plural or noun + 's'}"

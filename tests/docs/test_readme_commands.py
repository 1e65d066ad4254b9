"""The README lists every channel moderation command the CLI has (it once left out `unban`)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from parley_cli.main import build_parser
from parley_cli.messages import cmd_member

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_moderation_command_is_in_the_readme() -> None:
    parser = build_parser()
    [commands] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    moderation = {name for name, sub in commands.choices.items() if sub.get_default("run") is cmd_member}
    assert "unban" in moderation
    # The README names them together, as `parley invite|kick|ban|unban <channel> <user id>`.
    groups = [set(m[1].split("|")) for m in re.finditer(r"`parley ((?:\w+\|)+\w+) <channel>", README.read_text())]
    listed = next((group for group in groups if "kick" in group), set())
    assert moderation <= listed, f"not in the README: {sorted(moderation - listed)}"

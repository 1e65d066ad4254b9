"""The docs list every channel moderation command the CLI has (the README once left out `unban`)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from parley_cli.main import build_parser
from parley_cli.messages import cmd_member

SDK_GUIDE = Path(__file__).resolve().parents[2] / "docs" / "sdk.md"


def test_every_moderation_command_is_in_the_readme() -> None:
    parser = build_parser()
    [commands] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    moderation = {name for name, sub in commands.choices.items() if sub.get_default("run") is cmd_member}
    assert "unban" in moderation
    # docs/sdk.md names them together, as `parley invite|kick|ban|unban <channel> <user id>`.
    groups = [set(m[1].split("|")) for m in re.finditer(r"`parley ((?:\w+\|)+\w+) <channel>", SDK_GUIDE.read_text())]
    listed = next((group for group in groups if "kick" in group), set())
    assert moderation <= listed, f"not in docs/sdk.md: {sorted(moderation - listed)}"

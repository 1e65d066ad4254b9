"""Every `parley` command the README and docs/ name is one the CLI has, with flags it takes: a reader
who types one gets the command, not `invalid choice` or `unrecognized arguments`."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from parley_cli.main import build_parser

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# `parley …` in backticks, or a line of a shell block (continuations joined); the `#` comment dropped.
INLINE = re.compile(r"`(?:\.venv/bin/)?parley ([^`]+)`")
BLOCK = re.compile(r"```(?:sh|bash|console)\n(.*?)```", re.S)
LINE = re.compile(r"^(?:\w+=\S+ )*(?:\.venv/bin/)?parley (.*)$")


def named_commands() -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for doc in DOCS:
        text = doc.read_text()
        found += [(doc.name, m.group(1)) for m in INLINE.finditer(text)]
        for block in BLOCK.findall(text):
            for line in block.replace("\\\n", " ").splitlines():
                if m := LINE.match(line.split(" # ")[0].strip()):
                    found.append((doc.name, m.group(1)))
    return found


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return next((a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction)), {})


def options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {flag: action for action in parser._actions for flag in action.option_strings}


def problem(command: str, top: argparse.ArgumentParser) -> str | None:
    """What a reader typing `parley <command>` would be refused for; None when the CLI has it."""
    tokens = iter(re.sub(r"<[^>]*>", "X", command).split())
    known = options(top)
    parser, path = top, "parley"
    for token in tokens:
        if token.startswith("--"):
            flags = token.strip("[]").split("=")[0].split("|")  # `--private|--encrypted` names several
            if missing := [flag for flag in flags if flag not in known]:
                return f"{path} has no {missing[0]}"
            if known[flags[0]].nargs != 0 and "=" not in token:
                next(tokens, None)  # the flag's value
            continue
        choices = subcommands(parser)
        if not choices or token in ("X", "...", "…"):
            continue  # an argument or a placeholder, not a command
        names = token.split("|")  # `pause|resume|rollback` names several
        if not all(name in choices for name in names):
            return f"{path} has no command {token!r}"
        parser, path = choices[names[0]], f"{path} {names[0]}"
        known |= options(parser)
    return None


def test_every_parley_command_in_the_docs_exists_with_its_flags() -> None:
    top = build_parser()
    commands = named_commands()
    assert len(commands) > 100, "the docs name far more parley commands than found: the patterns broke"
    wrong = [f"{doc}: parley {cmd}: {why}" for doc, cmd in commands if (why := problem(cmd, top))]
    assert not wrong, "\n".join(wrong)


def test_a_missing_flag_or_command_is_caught() -> None:
    top = build_parser()
    assert problem("up --web-port N", top) is None
    assert problem("up --no-such-flag N", top) == "parley up has no --no-such-flag"
    assert problem("--as pat patch publish messaging 0.2.0", top) is None
    assert problem("--as oscar patch pause|resume|rollback <id>", top) is None
    assert problem("--as pat patch publsh messaging 0.2.0", top) == "parley patch has no command 'publsh'"
    assert problem("frobnicate", top) == "parley has no command 'frobnicate'"
    assert problem("--as bob create-channel --private|--secret <name>", top) == "parley create-channel has no --secret"

"""How a `parley` command is declared: its parser tied to the function that runs it (main runs
`args.run(args)`), a group of subcommands, and the options several commands share."""

from __future__ import annotations

import argparse
import os
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias

Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
Run = Callable[[argparse.Namespace], Awaitable[int]]


def command(parent: Subcommands, name: str, run: Run, **parser_options: Any) -> argparse.ArgumentParser:
    """A subcommand that `run` carries out; `parser_options` as argparse's add_parser takes them."""
    parser: argparse.ArgumentParser = parent.add_parser(name, **parser_options)
    parser.set_defaults(run=run)
    return parser


def command_group(parent: Subcommands, name: str, **parser_options: Any) -> Subcommands:
    """A command that only groups subcommands (`parley admin ...`): one of them must be named."""
    group: Subcommands = parent.add_parser(name, **parser_options).add_subparsers(dest=f"{name}_command", required=True)
    return group


def add_database_url_option(parser: argparse.ArgumentParser, *, help: str) -> None:
    """--database-url URL, by default $PARLEY_DATABASE_URL."""
    parser.add_argument("--database-url", default=os.environ.get("PARLEY_DATABASE_URL", ""), metavar="URL", help=help)


def add_reason_option(parser: argparse.ArgumentParser, *, help: str = "kept in the audit record") -> None:
    parser.add_argument("--reason", default="", help=help)

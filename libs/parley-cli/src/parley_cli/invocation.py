"""How the command being run was invoked: so a line that suggests the next command is runnable as printed."""

from __future__ import annotations

import argparse
import shlex


def parley_as_run(args: argparse.Namespace) -> str:
    """`parley` with the global options this run was given that the next command needs too: the data
    folder when one was named, the user of --as."""
    words = ["parley"]
    if getattr(args, "data_dir_given", False):
        words += ["--data-dir", str(args.data_dir)]
    if getattr(args, "user", None):
        words += ["--as", args.user]
    return shlex.join(words)

"""The `parley` command's entry point: Ctrl-C while the CLI is still loading its modules or
reading its arguments ends it in one line (exit 130), not with a traceback from the middle of an
import. Its output is guarded first: nothing it prints can drive the terminal (parley_cli.terminal)."""

from __future__ import annotations

import sys


def run() -> None:
    from parley_cli.terminal import guard_output

    guard_output()
    try:
        from parley_cli.main import main

        main()  # handles Ctrl-C itself once the command runs; before that (parsing), it comes here
    except KeyboardInterrupt:
        print("parley: interrupted before it began; nothing was done", file=sys.stderr)
        sys.exit(130)

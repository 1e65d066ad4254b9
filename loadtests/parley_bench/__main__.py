"""`python -m parley_bench [--quick] [--profile] [--out DIR]` (what `make bench` runs)."""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
from pathlib import Path

from parley_bench.run import run, table


def main() -> int:
    parser = argparse.ArgumentParser(prog="parley_bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short phases: checks the harness, figures are rough")
    parser.add_argument(
        "--profile", action="store_true", help="py-spy profiles of gateway, messaging, storage and `parley up`"
    )
    parser.add_argument("--out", type=Path, default=Path("bench-results"), help="where the JSON and table go")
    parser.add_argument("--keep", action="store_true", help="keep the temporary platform data folder")
    for phase, what in (
        ("live-streams", "the live-streams phase (streams per gateway, RSS)"),
        ("write-path", "the baselines and the write path (CPU per message, one channel, 100 channels)"),
        ("history", "the history page's p99 on a small and a large channel (filled through the archive API)"),
    ):
        parser.add_argument(f"--{phase}-only", action="store_true", help=f"only {what}")
    parser.add_argument(
        "--compare",
        metavar="VAR=A,B",
        help="the write path on one platform per value of an environment variable, alternating (A, B, A, B)",
    )
    parser.add_argument("--rounds", type=int, default=2, help="rounds of --compare")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="parley-bench-"))
    try:
        result = asyncio.run(
            run(
                quick=args.quick,
                out_dir=args.out,
                workdir=workdir,
                profile=args.profile,
                live_streams_only=args.live_streams_only,
                write_path_only=args.write_path_only,
                history_only=args.history_only,
                compare=args.compare,
                compare_rounds=args.rounds,
            )
        )
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print(table(result))
    print(f"[bench] written to {args.out}/latest.json and {args.out}/latest.txt")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

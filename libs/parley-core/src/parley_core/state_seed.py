"""A pod's state folder on its volume, made and seeded before the service starts.

Kubernetes runs this as a stateful service's init container (deploy/kubernetes, rendered by
scripts/render_kubernetes.py):

    python -m parley_core.state_seed --seed /seed /state/secrets /state/audit-checkpoints

It makes each folder on the PersistentVolumeClaim, the pod user's own and 0700 (the services chmod
their folders, which only the owner may: the volume's root is not theirs), and copies the seed's
files into the first (a Secret volume: the keys `parley kubernetes secrets` carries): a key only when the
folder lacks it, since the service changes its keys afterwards (storage's keyring, auth's rotated
signing key); the NATS password always, since the Secret's is the current one.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from parley_core.files import ensure_private_dir, write_private_file
from parley_core.natsconf import NATS_PASSWORDS_FILE

__all__ = ["seed_state"]

ALWAYS_REPLACED = frozenset({NATS_PASSWORDS_FILE.name})


def seed_state(state: Path, seed: Path | None) -> list[str]:
    """Makes `state` private and copies `seed`'s files it lacks into it; returns the names copied."""
    ensure_private_dir(state)
    copied = []
    # A Secret volume's own entries (`..data`, its timestamped folder) start with dots.
    for source in sorted(seed.glob("[!.]*")) if seed else []:
        target = state / source.name
        if source.is_file() and (source.name in ALWAYS_REPLACED or not target.exists()):
            write_private_file(target, source.read_bytes())
            copied.append(source.name)
    return copied


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", type=Path, nargs="+", help="the folders on the volume; the seed fills the first")
    parser.add_argument("--seed", type=Path, help="a folder whose files seed the first (a Secret volume)")
    args = parser.parse_args(argv)
    os.umask(0o077)
    first, *others = args.folders
    copied = seed_state(first, args.seed)
    for folder in others:
        ensure_private_dir(folder)
    print(f"{first}: {', '.join(copied) if copied else 'nothing'} copied from {args.seed or 'no seed'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

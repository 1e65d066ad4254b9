"""`parley rotate-kek`: the operator replaces storage's key-encryption key.

Storage re-wraps every data key under a new KEK generation and destroys the earlier ones; no
event is rewritten (StorageArchiveService.RotateKeyEncryptionKey). The keyring file changes, so
the key backup's copy is out of date, and the command says so as `parley erase` does.
"""

from __future__ import annotations

import argparse

from parley.storage.v1 import storage_pb2

from parley_cli.arguments import command
from parley_cli.privacy import KEYRING, TIMEOUT_S, _archive, _KeyringWatch, operator_only

KEYRING_ROTATED = (
    f"{KEYRING} changed (a new key-encryption key; the earlier ones were destroyed): copy it to your key "
    "backup now and destroy the older copy there, which still holds the retired keys"
)


async def cmd_rotate_kek(args: argparse.Namespace) -> int:
    operator_only(args, "rotating the key-encryption key")
    keyring = _KeyringWatch(args.data_dir, KEYRING_ROTATED)
    try:
        async with _archive(args) as archive:
            result = await archive.RotateKeyEncryptionKey(
                storage_pb2.RotateKeyEncryptionKeyRequest(), timeout=TIMEOUT_S
            )
    except BaseException:
        keyring.remind_if_changed()
        raise
    retired = ", ".join(result.retired_kek_ids) or "none"
    print(
        f"storage's key-encryption key is now {result.new_kek_id}: {result.rewrapped_data_keys} data keys "
        f"re-wrapped, no event rewritten; destroyed: {retired}"
    )
    keyring.remind_if_changed()
    return 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    command(
        sub,
        "rotate-kek",
        cmd_rotate_kek,
        help="replace storage's key-encryption key; every data key is re-wrapped (operator)",
        description="Make a new key-encryption key, re-wrap every data key under it and destroy the earlier "
        "keys; no archived event is rewritten. Refresh secrets/storage-kek.json in your key backup afterwards.",
    )

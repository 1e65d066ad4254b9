"""Device commands: this terminal's end-to-end encryption device, others' fingerprints, verification.

Each logged-in user of this CLI has one device per data folder, kept in
<data-dir>/cli/<user>.device.json (its secrets pickled by vodozemac with the key in
<user>.device.json.key; both 0600), so `parley chat` restarts as the same device.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import grpc
from parley.auth.v1 import auth_pb2

from parley_cli.admin import account_of
from parley_cli.arguments import command
from parley_cli.signin import signed_in
from parley_cli.terminal import shown
from parley_client import DeviceKeyChanged, DeviceStore, E2eeDevice, ParleyClient, ParleyError, fingerprint

USER_ID_CHARS = 32  # auth makes user ids as uuid4 hex


def device_store(args: argparse.Namespace) -> DeviceStore:
    from parley_core.files import ensure_private_dir

    folder: Path = ensure_private_dir(args.data_dir / "cli")
    return DeviceStore(folder / f"{args.user.casefold()}.device.json")


async def this_device(args: argparse.Namespace, client: ParleyClient) -> E2eeDevice:
    """This terminal's device for the logged-in user: the saved one, or a new one published now."""
    store = device_store(args)
    return await client.enable_e2ee(store=store)


async def remove_device(args: argparse.Namespace, client: ParleyClient) -> None:
    """Remove one of the user's devices; when it is this terminal's, forget it here too."""
    store = device_store(args)
    await client.remove_device(args.remove)
    print(f"removed device {args.remove}: its keys and queued messages are gone")
    if store.exists() and store.load(client).device_id == args.remove:
        store.delete()  # only after the server removed it: a refusal leaves the device as it was
        print("it was this terminal's device; the next encrypted command here makes a new one")


def _looks_like_user_id(text: str) -> bool:
    return len(text) == USER_ID_CHARS and all(c in "0123456789abcdef" for c in text)


async def user_id_of(args: argparse.Namespace, own_id: str) -> str:
    """A user id, or the id of a user name: yours, or one from auth's account directory (read
    with the operator's certificate in the data folder, as `parley admin show` does)."""
    reference: str = args.user_id
    if not reference or reference.casefold() == (args.user or "").casefold():
        return own_id
    if _looks_like_user_id(reference):
        return reference
    try:
        return (await account_of(args, reference)).user_id
    except ParleyError as exc:
        if exc.code == grpc.StatusCode.NOT_FOUND:
            raise SystemExit(f"no user named {reference!r}; check the name, or give their user id") from None
        raise


def trust_of(device: E2eeDevice, listed: auth_pb2.Device) -> str:
    """Pins the key on first sight (trust on first use) and says how far it is trusted."""
    try:
        device.pins.check(listed)
    except DeviceKeyChanged as exc:
        return f"NOT TRUSTED: {exc}"
    if (listed.user_id, listed.device_id) in device.pins.verified:
        return "verified"
    return "pinned on first sight (not verified)"


def device_lines(device: auth_pb2.Device, trust: str, *, mine: bool) -> str:
    """A device as listed; its owner chose its id and name: shown escaped."""
    name = f" ({shown(device.display_name)})" if device.display_name else ""
    this = " (this terminal)" if mine else ""
    return f"{shown(device.device_id)}{name}{this}\n  fingerprint {fingerprint(device)}\n  {shown(trust)}"


async def cmd_devices(args: argparse.Namespace) -> int:
    async with signed_in(args) as client:
        if args.remove:
            await remove_device(args, client)
            return 0
        device = await this_device(args, client)
        user_id = await user_id_of(args, client.user_id or "")
        listed = await client.list_devices([user_id])
        if not listed:
            print(f"{args.user_id or args.user} has no devices (they have not turned end-to-end encryption on)")
        for d in listed:
            mine = (d.user_id, d.device_id) == (client.user_id, device.device_id)
            print(device_lines(d, trust_of(device, d), mine=mine))
        if args.verify:
            match = [d for d in listed if d.device_id == args.verify]
            if not match:
                raise SystemExit(f"{user_id} has no device {args.verify!r}")
            try:
                device.pins.check(match[0])
            except DeviceKeyChanged as exc:
                raise SystemExit(f"not verified: {exc}") from None
            device.pins.verified.add((user_id, args.verify))
            print(f"marked {args.verify} of {user_id} verified (you compared the fingerprint with its owner)")
        device.changed()
    return 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    devices = command(
        sub,
        "devices",
        cmd_devices,
        help="end-to-end encryption devices of a user with their fingerprints; verify or remove one",
    )
    devices.add_argument("user_id", nargs="?", default="", help="whose devices: a user name or id (default: yours)")
    devices.add_argument("--verify", metavar="DEVICE", help="mark this device verified after comparing fingerprints")
    devices.add_argument(
        "--remove",
        metavar="DEVICE",
        help="remove one of your own devices (this terminal's too: it is then forgotten here)",
    )

"""Device commands: this terminal's end-to-end encryption device, others' fingerprints, verification.

Each logged-in user of this CLI has one device per data folder, kept in
<data-dir>/cli/<user>.device.json (its secrets pickled by vodozemac with the key in
<user>.device.json.key; both 0600), so `parley chat` restarts as the same device.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from parley.auth.v1 import auth_pb2

from parley_client import DeviceKeyChanged, DeviceStore, E2eeDevice, ParleyClient, fingerprint


def device_store(args: argparse.Namespace) -> DeviceStore:
    from parley_core.files import ensure_private_dir

    folder: Path = ensure_private_dir(args.data_dir / "cli")
    return DeviceStore(folder / f"{args.user.casefold()}.device.json")


async def this_device(args: argparse.Namespace, client: ParleyClient) -> E2eeDevice:
    """This terminal's device for the logged-in user: the saved one, or a new one published now."""
    store = device_store(args)
    return await client.enable_e2ee(store=store)


def trust_of(device: E2eeDevice, listed: auth_pb2.Device) -> str:
    """Pins the key on first sight (trust on first use) and says how far it is trusted."""
    try:
        device.pins.check(listed)
    except DeviceKeyChanged as exc:
        return f"NOT TRUSTED: {exc}"
    if (listed.user_id, listed.device_id) in device.pins.verified:
        return "verified"
    return "pinned on first sight (not verified)"


async def cmd_devices(args: argparse.Namespace) -> int:
    from parley_cli.main import _client, _login_as  # main imports this module: resolve late

    async with _client(args) as client:
        await _login_as(args, client)
        device = await this_device(args, client)
        if args.remove:
            if args.remove == device.device_id:
                raise SystemExit("that is this terminal's device; remove it from another one")
            await client.remove_device(args.remove)
            print(f"removed device {args.remove}: its keys and queued messages are gone")
            return 0
        user_id = args.user_id or client.user_id or ""
        listed = await client.list_devices([user_id])
        if not listed:
            print(f"{user_id} has no devices (nobody there has turned end-to-end encryption on)")
        for d in listed:
            status = trust_of(device, d)
            mine = " (this terminal)" if (d.user_id, d.device_id) == (client.user_id, device.device_id) else ""
            print(f"{d.device_id}{mine}\n  fingerprint {fingerprint(d)}\n  {status}")
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
    devices = sub.add_parser(
        "devices", help="end-to-end encryption devices of a user with their fingerprints; verify or remove one"
    )
    devices.add_argument("user_id", nargs="?", default="", help="whose devices (default: yours)")
    devices.add_argument("--verify", metavar="DEVICE", help="mark this device verified after comparing fingerprints")
    devices.add_argument("--remove", metavar="DEVICE", help="remove one of your own devices")
    devices.set_defaults(run=cmd_devices)

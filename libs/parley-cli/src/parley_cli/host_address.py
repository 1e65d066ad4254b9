"""`--host-address` of `parley up` and `parley host join`: the address other hosts reach this one at.

It becomes PARLEY_HOST_ADDRESS (parley_core.net.host_address), which every process the command
starts inherits: the front doors and NATS nodes listen on it and the fleet's state advertises it,
and `parley up` names it in the certificates it issues. Without it everything stays on loopback.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
from collections.abc import Sequence
from typing import Any

from parley_core.net import HOST_ADDRESS_ENV


class _SetHostAddress(argparse.Action):
    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, value: Any, option: str | None = None
    ) -> None:
        try:
            address = str(ipaddress.ip_address(str(value)))
        except ValueError:
            parser.error(f"--host-address {value!r} is no IP address (e.g. 10.0.0.2: this host's own)")
        os.environ[HOST_ADDRESS_ENV] = address
        setattr(namespace, self.dest, address)


def add_host_address_option(parser: argparse.ArgumentParser, names: Sequence[str] = ("--host-address",)) -> None:
    parser.add_argument(
        *names,
        action=_SetHostAddress,
        help=f"this host's own IP address: front doors and NATS listen on it, other hosts are told it "
        f"(default: ${HOST_ADDRESS_ENV}, else 127.0.0.1)",
    )

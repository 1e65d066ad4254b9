"""Where the gateway listens and which CA signed it, as a load run finds them.

A run against `make run` needs no flags: the data folder's client.json names both. A run
against another host passes ``--host host:port`` and ``PARLEY_CA_CERT``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_DATA_DIR = ".parley"


@dataclass(frozen=True)
class Target:
    gateway_address: str
    ca_cert: bytes

    @classmethod
    def resolve(cls, host: str | None) -> Target:
        data_dir = Path(os.environ.get("PARLEY_DATA_DIR", DEFAULT_DATA_DIR))
        client_json = data_dir / "client.json"
        recorded: dict[str, str] = json.loads(client_json.read_text()) if client_json.exists() else {}
        address = _strip_scheme(host) if host else recorded.get("gateway_address")
        ca_path = os.environ.get("PARLEY_CA_CERT") or recorded.get("ca_cert")
        if not address or not ca_path:
            raise SystemExit(
                f"no gateway to load: start the platform with `make run` (it writes {client_json}),"
                " or pass --host HOST:PORT and set PARLEY_CA_CERT to the platform's CA certificate"
            )
        return cls(gateway_address=address, ca_cert=Path(ca_path).read_bytes())


def _strip_scheme(host: str) -> str:
    """Locust's --host is URL-shaped elsewhere; accept `grpcs://h:p` as well as `h:p`."""
    return host.split("://", 1)[-1].rstrip("/")

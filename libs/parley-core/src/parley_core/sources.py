"""Client addresses: how the gateway names the address a call came from, and which addresses
share one budget (rate limits, registrations, lockouts).

The address is the client's real one: gateway instances listen on the client port themselves
(parley_agent.shared_port), so a call's gRPC peer is the client, not a proxy.
"""

from __future__ import annotations

import ipaddress

# Internal metadata through which the gateway tells the services behind it the client's
# address; they believe it only from a caller whose certificate names the gateway.
SOURCE_METADATA = "x-parley-source"
MAX_SOURCE_LENGTH = 128
# One IPv6 customer gets a /64 (RFC 6177): counting its addresses one by one would give a single
# client 2^64 budgets.
IPV6_BUDGET_PREFIX = 64


def client_address(peer: str) -> str:
    """The address of a gRPC peer without its port: 'ipv4:10.0.0.5:51234' -> 'ipv4:10.0.0.5',
    'ipv6:[2001:db8::1]:443' -> 'ipv6:[2001:db8::1]'. A source is a host, not a connection."""
    head, sep, port = peer.rpartition(":")
    address = head if sep and head and port.isdigit() else peer
    return address[:MAX_SOURCE_LENGTH]


def budget_key(address: str) -> str:
    """What addresses share a budget: an IPv4 address alone, an IPv6 address with its /64."""
    kind, _, host = address.partition(":")
    if kind != "ipv6":
        return address
    try:
        ip = ipaddress.IPv6Address(host.strip("[]").split("%")[0])
    except ValueError:
        return address
    if ip.ipv4_mapped is not None:
        return address  # an IPv4 client on a dual-stack socket: its own address
    network = ipaddress.IPv6Network((ip, IPV6_BUDGET_PREFIX), strict=False)
    return f"ipv6:[{network.network_address}]/{IPV6_BUDGET_PREFIX}"


def is_address(text: str) -> bool:
    """Whether `text` names a client address as sources are written (ipv4:203.0.113.9,
    ipv6:[2001:db8::1], an IPv6 budget's ipv6:[2001:db8::]/64) or as a person types one
    (203.0.113.9, 2001:db8::1)."""
    kind, sep, rest = text.partition(":")
    host = rest if sep and kind in ("ipv4", "ipv6") else text
    host = host.replace("[", "").replace("]", "")
    try:
        if "/" in host:
            ipaddress.ip_network(host, strict=False)
        else:
            ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False
    return True

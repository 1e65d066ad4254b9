"""The platform's synthetic accounts: the node agents' roll-out probers (parley_agent.probe).

A prober sends real messages through each new messaging instance so that a quiet platform's
roll-out gate has evidence; the anomaly detector must not take those sends for a person's. What
marks a prober is nothing a user can fake: auth lets only the platform identity, and a joined
host's node agent (its certificate: a member named so, nothing else), create an account whose name
begins with PROBER_NAME_PREFIX, and records which as the registration's actor on AUTH, which only
auth writes. A look-alike made before the prefix was reserved (registered by
a user, or by an administrator's token) is not synthetic: its registration names another actor.
"""

from __future__ import annotations

import hashlib
import re

from parley_core.topology import NODE_AGENT, PLATFORM_USER

PROBER_NAME_PREFIX = "canary-prober"
# A host's prober: the prefix and 10 hex digits of the host's name (prober_username), nothing a
# person could read as a message of its own ("canary-prober-it-support", say).
_HOST_PROBER_NAME = re.compile(re.escape(PROBER_NAME_PREFIX) + r"-[0-9a-f]{10}")
# The actors (as Actor prints them) who may register a prober: the platform, a joined host's agent.
PROBER_REGISTRARS = frozenset({PLATFORM_USER, f"service:{NODE_AGENT}"})


def is_prober_name(username: str) -> bool:
    """Whether a (normalized) username is in the probers' reserved range."""
    return username.startswith(PROBER_NAME_PREFIX)


def prober_username(host: str) -> str:
    """The prober of the agent on `host`: unique per host, within auth's 32 characters."""
    return f"{PROBER_NAME_PREFIX}-{hashlib.sha256(host.encode()).hexdigest()[:10]}" if host else PROBER_NAME_PREFIX


def is_host_prober_name(username: str) -> bool:
    """Whether a (normalized) username is a host's prober's, as prober_username makes it."""
    return _HOST_PROBER_NAME.fullmatch(username) is not None


def is_synthetic_account(*, username: str, registered_by: str) -> bool:
    """An account the platform identity or a node agent registered under a prober's name."""
    return registered_by in PROBER_REGISTRARS and is_prober_name(username)

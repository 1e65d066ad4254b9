"""Parley's pytest plugin: every fixture that starts a real server lives here."""

from parley_core.testing.nats import NatsTestServer, nats_server, pki
from parley_core.testing.platform import RunningPlatform, platform, wait_until
from parley_core.testing.stack import Stack, closed_stack, invite_stack, stack

__all__ = [
    "NatsTestServer",
    "RunningPlatform",
    "Stack",
    "closed_stack",
    "invite_stack",
    "nats_server",
    "pki",
    "platform",
    "stack",
    "wait_until",
]

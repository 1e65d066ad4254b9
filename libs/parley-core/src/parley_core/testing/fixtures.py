"""Parley's pytest plugin: every fixture that starts a real server lives here."""

from parley_core.testing.nats import NatsTestServer, nats_server, pki
from parley_core.testing.platform import RunningPlatform, platform
from parley_core.testing.postgres import PrivatePostgres, private_postgres
from parley_core.testing.stack import Stack, closed_stack, invite_stack, stack
from parley_core.testing.waiting import wait_until

__all__ = [
    "NatsTestServer",
    "PrivatePostgres",
    "RunningPlatform",
    "Stack",
    "closed_stack",
    "invite_stack",
    "nats_server",
    "pki",
    "platform",
    "private_postgres",
    "stack",
    "wait_until",
]

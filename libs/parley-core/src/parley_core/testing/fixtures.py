"""Parley's pytest plugin: every fixture that starts a real server lives here."""

from parley_core.testing.nats import NatsTestServer, nats_server, pki
from parley_core.testing.platform import RunningPlatform, platform, wait_until
from parley_core.testing.postgres import PrivatePostgres, private_postgres

__all__ = [
    "NatsTestServer",
    "PrivatePostgres",
    "RunningPlatform",
    "nats_server",
    "pki",
    "platform",
    "private_postgres",
    "wait_until",
]

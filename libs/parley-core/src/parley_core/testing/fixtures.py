"""Parley's pytest plugin: every fixture that starts a real server lives here."""

from parley_core.testing.nats import NatsTestServer, nats_server, pki
from parley_core.testing.platform import RunningPlatform, platform, wait_until

__all__ = ["NatsTestServer", "RunningPlatform", "nats_server", "pki", "platform", "wait_until"]

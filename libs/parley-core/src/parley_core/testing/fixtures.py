"""Parley's pytest plugin (registered as the ``parley`` pytest11 entry point).

Fixtures that start servers live in one place; this module only re-exports them.
"""

from parley_core.testing.nats import NatsTestServer, nats_server, pki

__all__ = ["NatsTestServer", "nats_server", "pki"]

"""Async client for Parley's gateway."""

from parley_client.client import ClientConfig, LiveEvent, LiveStream, ParleyClient, ParleyError
from parley_client.e2ee import E2eeDevice, UndecryptableMessage

__all__ = [
    "ClientConfig",
    "E2eeDevice",
    "LiveEvent",
    "LiveStream",
    "ParleyClient",
    "ParleyError",
    "UndecryptableMessage",
]

"""Async client for Parley's gateway."""

from parley_client.client import (
    ClientConfig,
    LiveEvent,
    LiveStream,
    MfaRequired,
    OutcomeUnknown,
    ParleyClient,
    ParleyError,
)
from parley_client.device_store import DeviceStore
from parley_client.e2ee import DeviceKeyChanged, E2eeDevice, UndecryptableMessage, fingerprint

__all__ = [
    "ClientConfig",
    "DeviceKeyChanged",
    "DeviceStore",
    "E2eeDevice",
    "LiveEvent",
    "LiveStream",
    "MfaRequired",
    "OutcomeUnknown",
    "ParleyClient",
    "ParleyError",
    "UndecryptableMessage",
    "fingerprint",
]

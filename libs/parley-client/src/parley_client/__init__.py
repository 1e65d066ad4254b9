"""Async client for Parley's gateway."""

from parley_client.client import ParleyClient
from parley_client.device_store import DeviceStore
from parley_client.e2ee import DeviceKeyChanged, E2eeDevice, UndecryptableMessage, fingerprint
from parley_client.errors import MfaRequired, OutcomeUnknown, ParleyError, never_sent
from parley_client.live import LiveEvent, LiveStream
from parley_client.session import ClientConfig

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
    "never_sent",
]

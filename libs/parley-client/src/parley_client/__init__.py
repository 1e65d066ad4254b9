"""Async client for Parley's gateway."""

from parley_client.client import ClientConfig, LiveEvent, LiveStream, ParleyClient, ParleyError

__all__ = ["ClientConfig", "LiveEvent", "LiveStream", "ParleyClient", "ParleyError"]

"""Async client for Parley's gateway."""

from parley_client.client import ClientConfig, LiveStream, ParleyClient, ParleyError

__all__ = ["ClientConfig", "LiveStream", "ParleyClient", "ParleyError"]

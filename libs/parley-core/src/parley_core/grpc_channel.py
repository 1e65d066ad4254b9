"""A mutual-TLS gRPC channel from one platform identity to a named peer.

Its own module, apart from the service runner, so that clients of a service (the `parley` CLI,
the node agent's health checks) reach it without importing the runner's server stack; tracing
(OpenTelemetry) loads on the first channel made, not on import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc

if TYPE_CHECKING:
    from parley_core.pki import Pki


def secure_channel(
    pki: Pki, *, identity: str, address: str, peer: str, context_in_metadata: bool = False
) -> grpc.aio.Channel:
    """`context_in_metadata`: the caller adds `telemetry.trace_metadata()` to every call it makes
    on the channel (see `telemetry.client_interceptors`)."""
    from parley_core import telemetry  # OpenTelemetry is slow to import: only once a channel is made

    cert, key = pki.read(identity)
    credentials = grpc.ssl_channel_credentials(root_certificates=pki.ca_pem(), private_key=key, certificate_chain=cert)
    # Verify the server's certificate names the service we mean to reach, whatever the address.
    options = [("grpc.ssl_target_name_override", peer)]
    interceptors = telemetry.client_interceptors(context_in_metadata=context_in_metadata)
    return grpc.aio.secure_channel(address, credentials, options=options, interceptors=interceptors)

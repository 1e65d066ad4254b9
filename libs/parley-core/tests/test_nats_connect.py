"""connect_nats keeps stderr free of asyncio's harmless warning about TLS half-close."""

from __future__ import annotations

import logging

import pytest

from parley_core.nats_connect import EOF_ON_UPGRADED_TLS
from parley_core.testing.nats import NatsTestServer

pytestmark = pytest.mark.asyncio


async def test_closing_a_tls_connection_leaves_no_eof_received_warning(
    nats_server: NatsTestServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="asyncio")
    client = await nats_server.connect("messaging")
    await client.close()
    asyncio_log = logging.getLogger("asyncio")

    # What asyncio's sslproto logs when the server closes the upgraded connection.
    asyncio_log.warning(EOF_ON_UPGRADED_TLS)
    asyncio_log.warning("some other asyncio warning")

    messages = [r.getMessage() for r in caplog.records if r.name == "asyncio"]
    assert messages == ["some other asyncio warning"]

"""connect_nats keeps stderr free of asyncio's harmless warning about TLS half-close; a one-shot
tool's connect gives up by itself."""

from __future__ import annotations

import asyncio
import logging

import pytest
from nats.errors import Error as NatsError

from parley_core.nats_connect import EOF_ON_UPGRADED_TLS, NatsUnreachable, connect_nats_once
from parley_core.net import free_port
from parley_core.pki import Pki
from parley_testing.nats import NatsTestServer

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


# A guard, not a measurement: connect_nats_once must give up by itself well before this.
GIVE_UP_GUARD_S = 30.0


async def test_a_one_shot_connect_to_nobody_gives_up_quietly(pki: Pki, caplog: pytest.LogCaptureFixture) -> None:
    """No server on the port: NatsUnreachable naming the URL, not a retry twice a second forever."""
    caplog.set_level(logging.DEBUG)
    url = f"tls://127.0.0.1:{free_port('127.0.0.1')}"  # nothing listens on it

    with pytest.raises(NatsUnreachable) as unreachable:
        await asyncio.wait_for(
            connect_nats_once(
                url=url, user="platform", password="x", ca_cert=pki.ca_cert, name="test-once", timeout_s=1
            ),
            GIVE_UP_GUARD_S,
        )

    assert url in str(unreachable.value)
    assert "Connect call failed" in str(unreachable.value)  # the last reason, said once
    assert not [r for r in caplog.records if "NATS error" in r.getMessage()]


async def test_a_one_shot_connect_reaches_a_server_and_a_refusal_is_raised_at_once(nats_server: NatsTestServer) -> None:
    client = await connect_nats_once(
        url=nats_server.url,
        user="platform",
        password=nats_server.passwords["platform"],
        ca_cert=nats_server.ca_cert,
        name="test-once",
    )
    try:
        assert client.is_connected
        assert (await client.jetstream().account_info()).streams == 0
    finally:
        await client.close()

    with pytest.raises(NatsError, match=r"(?i)authorization"):  # answered and refused: not "unreachable"
        await asyncio.wait_for(
            connect_nats_once(
                url=nats_server.url,
                user="platform",
                password="not-" + nats_server.passwords["platform"],
                ca_cert=nats_server.ca_cert,
                name="test-once",
                timeout_s=GIVE_UP_GUARD_S,
            ),
            GIVE_UP_GUARD_S * 2,
        )

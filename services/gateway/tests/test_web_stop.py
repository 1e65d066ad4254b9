"""A clean stop of the browser listener logs no error: hypercorn cancels the connections still
open after its graceful timeout (a page's live stream, a browser's idle connection), and Python
3.11's asyncio.start_server reports each such cancelled connection as an error from a callback.
BrowserListener.stop takes that for what it is at a stop; anything else is reported as before."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import pytest

from parley_gateway.web import _connections_cancelled_at_stop


async def test_a_connection_cancelled_at_a_stop_logs_no_error(caplog: pytest.LogCaptureFixture) -> None:
    connections: list[asyncio.Task[Any]] = []
    opened = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(asyncio.current_task())  # type: ignore[arg-type]
        opened.set()
        await asyncio.Event().wait()  # a live stream: open until the stop ends it

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    loop.set_exception_handler(_connections_cancelled_at_stop(previous))
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
        await asyncio.wait_for(opened.wait(), 10)
        with caplog.at_level(logging.DEBUG):
            connections[0].cancel()  # as hypercorn does after its graceful timeout
            with contextlib.suppress(asyncio.CancelledError):
                await connections[0]
            await asyncio.sleep(0)  # the server's callback on the cancelled task
    finally:
        loop.set_exception_handler(previous)
        writer.close()
        server.close()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert any("still open at the stop" in r.getMessage() for r in caplog.records)


async def test_other_errors_still_reach_the_handler_before_it() -> None:
    seen: list[dict[str, Any]] = []
    handler = _connections_cancelled_at_stop(lambda loop, context: seen.append(context))
    broken = {"message": "something else", "exception": RuntimeError("boom")}
    handler(asyncio.get_running_loop(), broken)
    assert seen == [broken]

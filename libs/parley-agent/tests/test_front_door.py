"""The node agent's front door: round-robin over live backends, removal stops new connections only."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from parley_agent.front_door import CONNECTIONS_PER_SOURCE, FrontDoor
from parley_core.net import free_port
from parley_testing.waiting import eventually

pytestmark = pytest.mark.asyncio
TIMEOUT_S = 10.0


async def named_server(name: str) -> asyncio.Server:
    """Answers every line with its own name, so the test sees which backend it reached."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.readline():
            writer.write(f"{name}\n".encode())
            await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


def address(server: asyncio.Server) -> str:
    return f"127.0.0.1:{server.sockets[0].getsockname()[1]}"


async def ask(door: FrontDoor, connection: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None) -> str:
    reader, writer = connection or await asyncio.open_connection(door.host, door.port)
    writer.write(b"who?\n")
    await writer.drain()
    line = await asyncio.wait_for(reader.readline(), TIMEOUT_S)
    if connection is None:
        writer.close()
    return line.decode().strip()


@pytest_asyncio.fixture
async def door() -> AsyncIterator[FrontDoor]:
    async with FrontDoor("test") as front:
        yield front


async def test_new_connections_alternate_and_removal_keeps_open_ones(door: FrontDoor) -> None:
    old, new = await named_server("old"), await named_server("new")
    door.add(address(old))
    door.add(address(new))
    assert {await ask(door) for _ in range(4)} == {"old", "new"}

    kept = None
    while kept is None:  # an open connection that happens to be on the old backend
        conn = await asyncio.open_connection(door.host, door.port)
        if await ask(door, conn) == "old":
            kept = conn
        else:
            conn[1].close()
    door.remove(address(old))
    assert {await ask(door) for _ in range(4)} == {"new"}
    assert await ask(door, kept) == "old"  # still served while the old instance drains
    kept[1].close()
    for server in (old, new):
        server.close()


async def test_a_refused_backend_is_skipped(door: FrontDoor) -> None:
    alive = await named_server("alive")
    door.add(f"127.0.0.1:{free_port()}")  # nothing listens there
    door.add(address(alive))
    assert [await ask(door) for _ in range(3)] == ["alive"] * 3
    alive.close()


async def test_a_share_sends_exactly_that_part_of_new_connections_to_an_instance() -> None:
    door = FrontDoor("messaging")
    for address in ("127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"):
        door.add(address)
    door.set_share("127.0.0.1:3", 10)
    picks = [door.pick() for _ in range(100)]
    assert picks.count("127.0.0.1:3") == 10
    assert picks.count("127.0.0.1:1") == picks.count("127.0.0.1:2") == 45
    assert "127.0.0.1:3" in picks[:10]  # spread out, not saved for the end
    door.set_share("127.0.0.1:3", 100)  # the gate passed: plain round-robin again
    assert [door.pick() for _ in range(3)].count("127.0.0.1:3") == 1
    door.set_share("127.0.0.1:3", 50)
    door.remove("127.0.0.1:3")  # rolled back: gone, and its share with it
    assert {door.pick() for _ in range(10)} == {"127.0.0.1:1", "127.0.0.1:2"}


async def test_the_stable_door_never_sends_a_connection_to_an_instance_on_trial(door: FrontDoor) -> None:
    """Where a call the canary failed is sent again: only instances without a share answer there."""
    stable, canary = await named_server("stable"), await named_server("canary")
    door.add(address(stable))
    door.add(address(canary))
    door.set_share(address(canary), 50)

    async def ask_stable() -> str:
        reader, writer = await asyncio.open_connection(door.host, door.stable_port)
        answer = await ask(door, (reader, writer))
        writer.close()
        return answer

    assert {await ask(door) for _ in range(6)} == {"stable", "canary"}
    assert [await ask_stable() for _ in range(6)] == ["stable"] * 6
    door.set_share(address(canary), 100)  # its gate passed: stable like the others
    assert {await ask_stable() for _ in range(6)} == {"stable", "canary"}
    door.remove(address(stable))
    assert [await ask_stable() for _ in range(3)] == ["canary"] * 3
    for server in (stable, canary):
        server.close()


async def test_bytes_cross_unchanged_both_ways_past_a_slow_reader(door: FrontDoor) -> None:
    """Megabytes each way, the backend reading slowly at first: the relay holds back the sender
    (flow control) and loses, reorders and changes nothing."""
    upload = bytes(range(256)) * 16_384  # 4 MiB
    download = bytes(reversed(range(256))) * 12_288  # 3 MiB
    received = asyncio.get_running_loop().create_future()
    sent = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await sent.wait()  # unread till then: the client's bytes pile up in the relay's buffers
        received.set_result(await reader.readexactly(len(upload)))
        writer.write(download)
        await writer.drain()
        writer.close()

    backend = await asyncio.start_server(handle, "127.0.0.1", 0)
    door.add(address(backend))
    reader, writer = await asyncio.open_connection(door.host, door.port)
    writer.write(upload)
    sent.set()
    await writer.drain()
    assert await asyncio.wait_for(received, TIMEOUT_S) == upload
    assert await asyncio.wait_for(reader.read(), TIMEOUT_S) == download  # then the backend's close
    writer.close()
    backend.close()


async def test_a_half_close_travels_on_and_the_answer_still_comes_back(door: FrontDoor) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        question = await reader.read()  # up to the client's end of file
        writer.write(b"answer to " + question)
        await writer.drain()
        writer.close()

    backend = await asyncio.start_server(handle, "127.0.0.1", 0)
    door.add(address(backend))
    reader, writer = await asyncio.open_connection(door.host, door.port)
    writer.write(b"question")
    writer.write_eof()
    assert await asyncio.wait_for(reader.read(), TIMEOUT_S) == b"answer to question"
    writer.close()
    backend.close()


async def test_a_client_that_leaves_closes_its_backend_connection(door: FrontDoor) -> None:
    ended = asyncio.get_running_loop().create_future()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.write(b"hello\n")
        await writer.drain()
        ended.set_result(await reader.read())  # b"" once the relay closes its side
        writer.close()

    backend = await asyncio.start_server(handle, "127.0.0.1", 0)
    door.add(address(backend))
    reader, writer = await asyncio.open_connection(door.host, door.port)
    writer.write(b"hi\n")
    assert await asyncio.wait_for(reader.readline(), TIMEOUT_S) == b"hello\n"
    writer.transport.abort()  # gone without a word
    assert await asyncio.wait_for(ended, TIMEOUT_S) == b""
    backend.close()


async def test_a_connection_with_no_live_instance_is_closed(door: FrontDoor) -> None:
    reader, writer = await asyncio.open_connection(door.host, door.port)
    assert await asyncio.wait_for(reader.read(), TIMEOUT_S) == b""
    writer.close()


async def test_one_source_holds_at_most_its_share_of_connections_and_others_still_get_through(door: FrontDoor) -> None:
    """A stranger that reaches a front door (a host address) and opens connections it never speaks
    on: past CONNECTIONS_PER_SOURCE from its address, each new one is closed at once, before a
    backend connection is made for it; a caller from another address is relayed as ever."""
    reached = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal reached
        reached += 1
        if await reader.readline():
            writer.write(b"answer\n")
            await writer.drain()
        await reader.read()
        writer.close()

    async def all_reached() -> bool | None:
        return True if reached == CONNECTIONS_PER_SOURCE else None

    async def answered_from_stranger() -> bytes | None:
        reader, writer = await asyncio.open_connection(door.host, door.port, local_addr=stranger)
        writer.write(b"who?\n")
        line = await asyncio.wait_for(reader.readline(), TIMEOUT_S)
        writer.close()
        return line or None  # b"": refused, the stranger's ended connection not yet counted off

    backend = await asyncio.start_server(handle, "127.0.0.1", 0)
    door.add(address(backend))
    stranger = ("127.0.0.2", 0)  # another source on the loopback network
    held = [
        await asyncio.open_connection(door.host, door.port, local_addr=stranger) for _ in range(CONNECTIONS_PER_SOURCE)
    ]
    await eventually(all_reached, f"the backend reached {CONNECTIONS_PER_SOURCE} times")
    reader, writer = await asyncio.open_connection(door.host, door.port, local_addr=stranger)
    assert await asyncio.wait_for(reader.read(), TIMEOUT_S) == b""  # closed by the door
    writer.close()
    caller = await asyncio.open_connection(door.host, door.port)
    caller[1].write(b"who?\n")
    assert await asyncio.wait_for(caller[0].readline(), TIMEOUT_S) == b"answer\n"
    assert reached == CONNECTIONS_PER_SOURCE + 1  # the refused one never reached the backend
    held.pop()[1].close()  # one of the stranger's ends: a new one of its own is relayed again
    assert await eventually(answered_from_stranger, "a new connection of the stranger's relayed") == b"answer\n"
    for _, held_writer in (*held, caller):
        held_writer.close()
    backend.close()

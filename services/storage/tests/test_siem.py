"""The SIEM feed against a running stack: audit records and anomaly findings arrive at a real
syslog receiver the test starts (TCP with octet counting, UDP, TLS), and parse as RFC 5424 lines
carrying CEF. The parser here is written from the two specifications, not from the code."""

from __future__ import annotations

import asyncio
import json
import re
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from parley.auth.v1 import auth_pb2

from parley_core.pki import Pki
from parley_storage.siem import cef
from parley_testing.stack import TIMEOUT_S, Stack
from parley_testing.waiting import until

# RFC 5424: <PRI>VERSION SP TIMESTAMP SP HOSTNAME SP APP-NAME SP PROCID SP MSGID SP SD [SP MSG]
SYSLOG = re.compile(
    rb"<(?P<pri>\d{1,3})>1 (?P<ts>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,6})?(?:Z|[+-]\d\d:\d\d)) "
    rb"(?P<host>\S{1,255}) (?P<app>\S{1,48}) (?P<proc>\S{1,128}) (?P<msgid>\S{1,32}) (?P<sd>-|\[.*?\])"
    rb"(?: (?P<msg>.*))?$",
    re.DOTALL,
)
BOM = b"\xef\xbb\xbf"


@dataclass
class Line:
    facility: int
    severity: int
    host: str
    app: str
    msgid: str
    header: list[str]  # the seven CEF header fields after "CEF:0"
    ext: dict[str, str]


def split_unescaped(text: str, sep: str) -> list[str]:
    parts, current, i = [], "", 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text):
            current += text[i + 1]
            i += 2
            continue
        if text[i] == sep:
            parts.append(current)
            current = ""
        else:
            current += text[i]
        i += 1
    parts.append(current)
    return parts


def parse_extension(text: str) -> dict[str, str]:
    """key=value pairs; a value runs to the next unescaped ` key=`; \\= \\\\ \\n \\r escaped."""
    keys = list(re.finditer(r"(?:^| )([A-Za-z0-9_]+)=(?<!\\=)", text))
    found: dict[str, str] = {}
    for n, match in enumerate(keys):
        end = keys[n + 1].start() if n + 1 < len(keys) else len(text)
        raw = text[match.end() : end]
        found[match.group(1)] = re.sub(r"\\(.)", lambda m: {"n": "\n", "r": "\r"}.get(m.group(1), m.group(1)), raw)
    return found


def parse(frame: bytes) -> Line:
    match = SYSLOG.match(frame)
    assert match is not None, frame
    msg = match.group("msg") or b""
    assert msg.startswith(BOM)
    text = msg[len(BOM) :].decode()
    assert text.startswith("CEF:0|"), text
    fields = split_unescaped(text[len("CEF:0|") :], "|")
    header, extension = fields[:6], "|".join(fields[6:])
    pri = int(match.group("pri"))
    return Line(pri // 8, pri % 8, match.group("host").decode(), match.group("app").decode(),
                match.group("msgid").decode(), header, parse_extension(extension))  # fmt: skip


@dataclass
class Receiver:
    url: str
    lines: list[Line] = field(default_factory=list)
    close: list[asyncio.AbstractServer | asyncio.BaseTransport] = field(default_factory=list)


def octet_counted(receiver: Receiver) -> object:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                length = int((await reader.readuntil(b" ")).decode().strip())
                receiver.lines.append(parse(await reader.readexactly(length)))
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    return handle


class Datagrams(asyncio.DatagramProtocol):
    def __init__(self, receiver: Receiver) -> None:
        self.receiver = receiver

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.receiver.lines.append(parse(data))


@pytest_asyncio.fixture(params=["tcp", "udp", "tls"])
async def receiver(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, pki: Pki, tmp_path: Path
) -> AsyncIterator[Receiver]:
    scheme = request.param
    loop = asyncio.get_running_loop()
    got = Receiver(url="")
    if scheme == "udp":
        transport, _ = await loop.create_datagram_endpoint(lambda: Datagrams(got), local_addr=("127.0.0.1", 0))
        port = transport.get_extra_info("sockname")[1]
        got.close.append(transport)
    else:
        context = None
        if scheme == "tls":
            cert, key = pki.read("nats")  # its certificate names 127.0.0.1; the client trusts the CA
            (tmp_path / "siem.crt").write_bytes(cert)
            (tmp_path / "siem.key").write_bytes(key)
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(tmp_path / "siem.crt", tmp_path / "siem.key")
            monkeypatch.setenv("PARLEY_SIEM_CA_FILE", str(pki.ca_cert))
        server = await asyncio.start_server(octet_counted(got), "127.0.0.1", 0, ssl=context)  # type: ignore[arg-type]
        port = server.sockets[0].getsockname()[1]
        got.close.append(server)
    got.url = f"{scheme}://127.0.0.1:{port}"
    monkeypatch.setenv("PARLEY_SIEM_URL", got.url)
    monkeypatch.setenv("PARLEY_SIEM_HOSTNAME", "parley-test")
    try:
        yield got
    finally:
        for closing in got.close:
            closing.close()


async def test_audit_records_and_findings_reach_the_collector(receiver: Receiver, stack: Stack) -> None:
    auth = stack.auth_as_gateway()
    for n in range(10):
        request = auth_pb2.LoginRequest(username=f"victim{n}", password="wrong-password-guess")
        with pytest.raises(grpc.aio.AioRpcError):
            await auth.Login(request, metadata=(("x-parley-source", "ipv4:203.0.113.9"),), timeout=TIMEOUT_S)

    def spraying_arrived() -> bool:
        return any(line.ext.get("cs1") == "password_spraying" for line in receiver.lines)

    await until(spraying_arrived, f"the spraying finding at {receiver.url}", TIMEOUT_S)
    failed = [line for line in receiver.lines if line.header[3] == "sec:login_failed"]
    # One record per guessed name (auth may name an unknown account by a digest, not as typed).
    assert len({line.ext["suser"] for line in failed}) == 10
    first = failed[0]
    assert first.facility == 10  # authpriv
    assert (first.host, first.app, first.msgid) == ("parley-test", "parley-storage", "sec")
    assert first.header[:3] == ["Parley", "parley-storage", first.header[2]]
    assert first.ext["src"] == "203.0.113.9"
    assert first.ext["act"] == "login_failed"
    assert first.ext["outcome"] == "failure"
    assert first.ext["rt"].isdigit()
    [spraying] = [line for line in receiver.lines if line.ext.get("cs1") == "password_spraying"]
    assert spraying.msgid == "anomaly"
    assert spraying.header[3] == "anomaly:password_spraying"
    assert int(spraying.header[5]) >= 7
    assert spraying.ext["cs1Label"] == "kind"
    assert spraying.ext["act"] == "slow_source"
    assert json.loads(spraying.ext["cs3"])["accounts"] == "10"
    assert float(spraying.ext["cfp1"]) >= 1.0
    assert "10 different accounts" in spraying.ext["msg"]


def test_cef_escapes_what_would_end_a_field() -> None:
    text = cef("sig|1", "a\\b", 5, "1.0", {"suser": "eve=admin x=1", "msg": "two\nlines", "empty": ""})
    head, _, _ = text.partition("suser=")
    assert split_unescaped(head.removeprefix("CEF:0|"), "|")[:6] == [
        "Parley",
        "parley-storage",
        "1.0",
        "sig|1",
        "a\\b",
        "5",
    ]
    assert parse_extension(text.split("|")[-1]) == {"suser": "eve=admin x=1", "msg": "two\nlines"}

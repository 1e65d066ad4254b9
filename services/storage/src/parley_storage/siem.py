"""The SIEM feed: auth's audit records (SEC) and the detector's findings, as RFC 5424 syslog
lines carrying CEF, sent to the operator's collector over UDP, TCP or TLS.

Why CEF in syslog rather than OCSF JSON: every SIEM in use (Splunk, QRadar, ArcSight, Microsoft
Sentinel, Elastic, Wazuh) has a syslog listener with a CEF parser out of the box, and a line is
self-describing without a schema version to agree on; OCSF is mostly ingested through HTTP or
object-store pipelines, and each record needs a class mapping a collector must know. The CEF
fields used are the common dictionary's (rt, src, suser, suid, act, msg, outcome, externalId),
custom ones labelled (cs1Label=kind, cfp1Label=score).

Each record is forwarded by a durable consumer (topology.SIEM_CONSUMERS) and acknowledged once
written to the socket: a collector that is down holds the feed (RetryLater), and nothing is
skipped. Over TCP and TLS the lines are framed by octet counting (RFC 6587 3.4.1, RFC 5425);
over UDP each is one datagram (RFC 5426).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import json
import logging
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from google.protobuf.message import Message
from parley.auth.v1.events_pb2 import SecurityEventRecorded
from parley.storage.v1.events_pb2 import AnomalyDetected
from pydantic_settings import BaseSettings, SettingsConfigDict

from parley_core.bus import EventBus, ReceivedEvent, RetryLater
from parley_core.envelope import UnknownEventType
from parley_core.topology import SIEM_CONSUMERS

log = logging.getLogger(__name__)

VENDOR, PRODUCT = "Parley", "parley-storage"
FACILITY_AUTHPRIV = 10
CONNECT_TIMEOUT_S = 5.0
# CEF severity (0-10) of each audit record kind; unnamed kinds are 3.
SECURITY_SEVERITY = {
    "login_failed": 4,
    "mfa_failed": 5,
    "step_up_failed": 5,
    "lockout": 7,
    "refresh_token_reuse": 8,
    "role_assigned": 6,
    "account_disabled": 6,
    "session_revoked": 4,
    "password_changed": 5,
    "change_not_made": 5,
    "source_slowdown_lifted": 6,  # an administrator let a suspicious address in again
}
ANOMALY_SEVERITY = 7
ANOMALY_RESPONDED_SEVERITY = 8


class SiemSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PARLEY_SIEM_", extra="ignore")

    # udp://host:514, tcp://host:601 or tls://host:6514; empty: no feed.
    url: str = ""
    # TLS: the CA file that signed the collector's certificate (empty: the system's).
    ca_file: str = ""
    # The HOSTNAME field of each line (empty: this host's name).
    hostname: str = ""


# -- formatting (pure) ----------------------------------------------------------------------


def _header(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|")


def _ext(text: str) -> str:
    return text.replace("\\", "\\\\").replace("=", "\\=").replace("\r", "\\r").replace("\n", "\\n")


def cef(signature: str, name: str, severity: int, version: str, fields: dict[str, str]) -> str:
    extension = " ".join(f"{key}={_ext(value)}" for key, value in fields.items() if value)
    head = "|".join(_header(p) for p in (VENDOR, PRODUCT, version, signature, name, str(severity)))
    return f"CEF:0|{head}|{extension}"


def _address(source: str) -> dict[str, str]:
    """CEF's `src` for an IP address, as the platform records one ('ipv4:10.0.0.5',
    'ipv6:[2001:db8::1]') or bare; anything else (a host name) is `shost`."""
    bare = source.removeprefix("ipv4:").removeprefix("ipv6:").removeprefix("[").removesuffix("]")
    try:
        return {"src": str(ipaddress.ip_address(bare))}
    except ValueError:
        return {"shost": source} if source else {}


def _millis(event: ReceivedEvent) -> str:
    stamp = event.envelope.occurred_at
    return str(stamp.seconds * 1000 + stamp.nanos // 1_000_000)


def security_cef(record: SecurityEventRecorded, event: ReceivedEvent, version: str) -> tuple[int, str]:
    severity = SECURITY_SEVERITY.get(record.kind, 3)
    fields = {
        "rt": _millis(event),
        "externalId": event.envelope.event_id,
        **_address(record.source),
        "suser": record.username,
        "suid": record.user_id,
        "act": record.kind,
        "msg": record.detail,
        "outcome": "failure" if record.kind.endswith("_failed") else "",
        "cs1Label": "actor",
        "cs1": record.actor,
        "cn1Label": "chainIndex",
        "cn1": str(record.chain_index),
    }
    return severity, cef(f"sec:{record.kind}", record.kind.replace("_", " "), severity, version, fields)


def anomaly_cef(found: AnomalyDetected, event: ReceivedEvent, version: str) -> tuple[int, str]:
    severity = ANOMALY_SEVERITY if found.response == "alert" else ANOMALY_RESPONDED_SEVERITY
    fields = {
        "rt": _millis(event),
        "externalId": event.envelope.event_id,
        **_address(found.source),
        "suid": found.user_id,
        "act": found.response,
        "msg": found.why,
        "cs1Label": "kind",
        "cs1": found.kind,
        "cs2Label": "subject",
        "cs2": found.subject,
        "cs3Label": "evidence",
        "cs3": json.dumps(dict(sorted(found.evidence.items())), separators=(",", ":")),
        "cs4Label": "sessionId",
        "cs4": found.session_id,
        "cfp1Label": "score",
        "cfp1": f"{found.score:.3f}",
    }
    return severity, cef(f"anomaly:{found.kind}", f"anomaly {found.kind}", severity, version, fields)


def syslog_severity(cef_severity: int) -> int:
    """CEF 0-10 to syslog's: 9+ critical, 7-8 error, 4-6 warning, below notice."""
    return 2 if cef_severity >= 9 else 3 if cef_severity >= 7 else 4 if cef_severity >= 4 else 5


def syslog_line(*, cef_severity: int, message: str, hostname: str, msgid: str, at: dt.datetime) -> bytes:
    """An RFC 5424 message: no structured data, the CEF text as MSG (UTF-8, with its BOM)."""
    pri = FACILITY_AUTHPRIV * 8 + syslog_severity(cef_severity)
    stamp = at.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    head = f"<{pri}>1 {stamp} {hostname[:255] or '-'} parley-storage - {msgid[:32]} - "
    return head.encode() + b"\xef\xbb\xbf" + message.encode()


def to_syslog(event: ReceivedEvent, payload: Message, *, version: str, hostname: str) -> bytes | None:
    if isinstance(payload, SecurityEventRecorded):
        severity, text = security_cef(payload, event, version)
        msgid = "sec"
    elif isinstance(payload, AnomalyDetected):
        severity, text = anomaly_cef(payload, event, version)
        msgid = "anomaly"
    else:
        return None
    at = event.envelope.occurred_at.ToDatetime(tzinfo=dt.UTC)
    return syslog_line(cef_severity=severity, message=text, hostname=hostname, msgid=msgid, at=at)


# -- sending ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Destination:
    scheme: str  # udp, tcp, tls
    host: str
    port: int

    @classmethod
    def parse(cls, url: str) -> Destination:
        parts = urlsplit(url)
        if parts.scheme not in ("udp", "tcp", "tls") or not parts.hostname or not parts.port:
            raise ValueError(f"PARLEY_SIEM_URL {url!r} is not udp://, tcp:// or tls://host:port")
        return cls(parts.scheme, parts.hostname, parts.port)


class SiemSender:
    """One connection (or UDP socket) to the collector, opened again after a failure."""

    def __init__(self, destination: Destination, *, ca_file: str = "") -> None:
        self.destination = destination
        self._ca_file = ca_file
        self._writer: asyncio.StreamWriter | None = None
        self._udp: asyncio.DatagramTransport | None = None

    async def send(self, lines: Sequence[bytes]) -> None:
        d = self.destination
        if d.scheme == "udp":
            if self._udp is None:
                loop = asyncio.get_running_loop()
                self._udp, _ = await loop.create_datagram_endpoint(
                    asyncio.DatagramProtocol, remote_addr=(d.host, d.port), family=socket.AF_UNSPEC
                )
            for line in lines:
                self._udp.sendto(line)
            return
        if self._writer is None or self._writer.is_closing():
            context: ssl.SSLContext | None = None
            if d.scheme == "tls":
                context = ssl.create_default_context(cafile=self._ca_file or None)
            _, self._writer = await asyncio.wait_for(
                asyncio.open_connection(d.host, d.port, ssl=context), CONNECT_TIMEOUT_S
            )
        writer = self._writer
        assert writer is not None
        for line in lines:
            writer.write(f"{len(line)} ".encode() + line)
        await writer.drain()

    async def close(self) -> None:
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):  # already broken: closing was all that was left
                await self._writer.wait_closed()
            self._writer = None


class SiemFeed:
    """The durable consumers of SEC and of the detector's findings, forwarding to the collector."""

    def __init__(self, bus: EventBus, settings: SiemSettings, *, version: str) -> None:
        self.bus = bus
        self.version = version
        self.hostname = settings.hostname or socket.gethostname()
        self.sender = SiemSender(Destination.parse(settings.url), ca_file=settings.ca_file)
        self.sent = 0

    async def start(self) -> None:
        for spec in SIEM_CONSUMERS:
            await self.bus.consume(spec, self.forward)

    async def forward(self, batch: Sequence[ReceivedEvent]) -> None:
        lines: list[bytes] = []
        for event in batch:
            try:
                payload = event.payload
            except UnknownEventType:
                continue  # a newer writer's record: this release cannot describe it
            if (line := to_syslog(event, payload, version=self.version, hostname=self.hostname)) is not None:
                lines.append(line)
        if not lines:
            return
        try:
            await self.sender.send(lines)
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            await self.sender.close()
            raise RetryLater(f"SIEM collector {self.sender.destination} unreachable: {exc}") from exc
        self.sent += len(lines)

    async def stop(self) -> None:
        await self.sender.close()

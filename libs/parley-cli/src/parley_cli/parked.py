"""`parley parked`: list the poison events that consumers have set aside, and the foreign ones.

A consumer parks an event it failed on (a poison event), and, as a security finding, any event
whose type its stream's owner never writes (kind `foreign-event`: forged, or published by the
wrong service).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nats.js.errors

from parley_cli.state import load_running_state
from parley_cli.terminal import shown
from parley_core.bus import FOREIGN_EVENT
from parley_core.nats_connect import connect_nats
from parley_core.natsconf import ensure_nats_passwords
from parley_core.topology import PLATFORM_USER


@dataclass(frozen=True)
class ParkedEvent:
    seq: int
    subject: str
    original_subject: str
    original_stream: str
    original_seq: str
    consumer: str
    reason: str
    kind: str = ""  # FOREIGN_EVENT for an event its stream's owner never writes

    @property
    def security_finding(self) -> bool:
        return self.kind == FOREIGN_EVENT

    def line(self) -> str:
        """Its headers come from whatever failed (a reason may quote the event): shown escaped."""
        origin = f"{self.original_stream}:{self.original_seq} {self.original_subject}"
        security = " SECURITY (not its stream owner's to write)" if self.security_finding else ""
        return f"#{self.seq} {shown(origin)} consumer={shown(self.consumer)}{security} reason={shown(self.reason)}"


async def list_parked(data_dir: Path) -> list[ParkedEvent]:
    state = load_running_state(data_dir)
    password = ensure_nats_passwords(data_dir / "secrets" / "nats-passwords.json", [PLATFORM_USER])[PLATFORM_USER]
    nc = await connect_nats(
        url=state["nats_url"],
        user=PLATFORM_USER,
        password=password,
        ca_cert=data_dir / "pki" / "ca.crt",
        name="parley-parked",
        allow_reconnect=False,
        max_reconnect_attempts=1,
        connect_timeout=3,
    )
    try:
        js = nc.jetstream()
        info = await js.stream_info("PARKED")
        found: list[ParkedEvent] = []
        if not info.state.messages:
            return found
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            try:
                msg = await js.get_msg("PARKED", seq)
            except nats.js.errors.NotFoundError:
                continue  # removed by an operator
            headers = msg.headers or {}
            found.append(
                ParkedEvent(
                    seq=seq,
                    subject=msg.subject or "",
                    original_subject=headers.get("Parley-Original-Subject", ""),
                    original_stream=headers.get("Parley-Original-Stream", ""),
                    original_seq=headers.get("Parley-Original-Sequence", ""),
                    consumer=headers.get("Parley-Consumer", ""),
                    reason=headers.get("Parley-Parked-Reason", ""),
                    kind=headers.get("Parley-Parked-Kind", ""),
                )
            )
        return found
    finally:
        await nc.close()

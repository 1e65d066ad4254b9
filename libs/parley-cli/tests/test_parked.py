"""`parley parked` lists the platform's findings first, then a flooded PARKED stream in batches.

Any service may park on its own subtree (parley.parked.<service>.>), the internet-facing
gateway included, so a stolen credential can fill PARKED with copies to bury the security
records among them; the consumer guard's findings are on a stream of their own. The listing
once asked for every event by its own request (25,200 took longer than a minute, and showed
nothing until the end); it reads through one consumer in batches. Real nats-server, the
platform's users and streams.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from nats.aio.msg import Msg

from parley_cli.parked import ParkedEvent, list_parked
from parley_core import topology
from parley_core.bus import FOREIGN_EVENT, EventBus
from parley_core.consumer_floods import CONSUMER_FLOOD
from parley_core.pki import Pki
from parley_testing.nats import NatsTestServer

FLOOD = 3000


class ApiRequests:
    """The JetStream API requests clients publish (a core subscription of the platform's user
    sees them all)."""

    def __init__(self) -> None:
        self.subjects: list[str] = []

    async def seen(self, msg: Msg) -> None:
        self.subjects.append(msg.subject)


async def test_a_flooded_parked_stream_is_listed_in_batches(
    nats_server: NatsTestServer, pki: Pki, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    (data_dir / "secrets").mkdir(parents=True)
    (data_dir / "pki").symlink_to(pki.directory, target_is_directory=True)
    (data_dir / "secrets" / "nats-passwords.json").write_text(json.dumps(nats_server.passwords))
    state = {"running": True, "pid": os.getpid(), "nats_url": nats_server.url}  # as `parley up` writes it
    (data_dir / "platform.json").write_text(json.dumps(state))
    platform = EventBus(await nats_server.connect("platform"), service="platform", producer="test@0")
    await platform.ensure_streams(topology.STREAMS)
    gateway = (await nats_server.connect("gateway")).jetstream()  # the stolen credential
    forged = topology.parked_subject("messaging", "MSG")
    await platform.js.publish(
        f"{forged}.1", b"x", headers={"Parley-Parked-Kind": FOREIGN_EVENT, "Parley-Original-Stream": "MSG"}
    )
    for n in range(FLOOD):
        await gateway.publish(f"{topology.parked_subject('gateway', 'MSG')}.{n}", b"junk")
    # The consumer guard's finding, as it records it, after the flood.
    finding = {"Parley-Parked-Kind": CONSUMER_FLOOD, "Parley-Original-Stream": "MSG", "Parley-Consumer": "640"}
    await platform.js.publish(topology.platform_finding_subject(CONSUMER_FLOOD, "MSG"), b"{}", headers=finding)

    requests = ApiRequests()
    watcher = await nats_server.connect("platform")
    await watcher.subscribe("$JS.API.>", cb=requests.seen)
    await watcher.flush()
    listed = [event async for event in list_parked(data_dir)]
    await watcher.flush()
    calls = len(requests.subjects)

    found, parked = listed[0], listed[1:]
    assert found.stream == topology.PLATFORM_FINDINGS
    assert found.security_finding
    assert found.line().startswith("PLATFORM_FINDINGS #1 found by platform: MSG")
    assert [e.seq for e in parked] == list(range(1, FLOOD + 2))
    assert parked[0].security_finding
    assert "SECURITY" in parked[0].line()
    assert calls < 20, f"{calls} JetStream API requests to list {FLOOD + 2} records"


def _record(subject: str, kind: str, stream: str = "PARKED") -> ParkedEvent:
    return ParkedEvent(
        seq=7,
        subject=subject,
        original_subject="",
        original_stream="AUTH",
        original_seq="",
        consumer="640 made by messaging",
        reason="messaging's NATS credential made consumers it may not keep",
        kind=kind,
        stream=stream,
    )


def test_a_consumer_flood_record_is_the_guards_finding_only_on_the_platforms_stream() -> None:
    """The red team's gateway parked a consumer-flood record blaming messaging on its own
    subtree; `parley parked` printed it exactly like the guard's finding."""
    found_on = topology.platform_finding_subject(CONSUMER_FLOOD, "AUTH")
    guards = _record(found_on, CONSUMER_FLOOD, topology.PLATFORM_FINDINGS)
    assert guards.security_finding
    assert guards.line().startswith("PLATFORM_FINDINGS #7 found by platform: ")
    assert "SECURITY (a service's credential made consumers it may not keep)" in guards.line()

    claimed = _record(topology.parked_subject("gateway", "AUTH"), CONSUMER_FLOOD)
    assert not claimed.security_finding
    assert claimed.line().startswith("#7 parked by gateway: ")
    assert "SECURITY" not in claimed.line()
    assert "claims kind consumer-flood, which only platform records (on PLATFORM_FINDINGS): NOT a finding" in (
        claimed.line()
    )
    # Nor on the platform's subtree of PARKED: the guard no longer records its findings there.
    assert not _record(topology.parked_subject(topology.PLATFORM_USER, "AUTH"), CONSUMER_FLOOD).security_finding

    foreign = _record(f"{topology.parked_subject('storage', 'MSG')}.3", FOREIGN_EVENT)  # any consumer parks these
    assert foreign.security_finding
    assert foreign.line().startswith("#7 parked by storage: ")

"""A second host joins the fleet: two node agents in two data folders on loopback, one JetStream cluster.

The first host is `parley up --nats-cluster 3`; the operator issues host-b's bundle there with
`parley host add` (certificates from the platform CA, never its key) and host-b runs
`parley host join` from its own folder. `parley fleet` names both hosts; a client of host-b's
gateway is served by host-b's instances and what it sends is in history on the first host. A
host running auth (host-c) logs people in while the first host's auth is stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from parley_client import ParleyClient
from parley_core.net import free_port
from parley_testing.cli_rollout import cli, roll_out, rollout_ended
from parley_testing.operators import OperatorTokens
from parley_testing.platform import JoinedHost, RunningPlatform
from parley_testing.stack import PASSWORD
from parley_testing.traffic import Traffic, history_count, send_continuously
from parley_testing.waiting import eventually

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

MESSAGING_SOURCE = Path(__file__).resolve().parents[2] / "services" / "messaging"
NEW_VERSION = "0.2.0"


@pytest.fixture(scope="module")
def first_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningPlatform]:
    root = tmp_path_factory.mktemp("host-a")
    running = RunningPlatform(
        data_dir=root / "data",
        env={"PARLEY_REGISTRATION": "open", "PARLEY_HEARTBEAT_SECONDS": "1", "PARLEY_PATCH_GATE_WINDOW_SECONDS": "3"},
        up_args=("--gateway-port", str(free_port()), "--nats-cluster", "3"),
    )
    yield from running.served()


def issued_by(cert: Path, ca: Path) -> bool:
    x509.load_pem_x509_certificate(cert.read_bytes()).verify_directly_issued_by(
        x509.load_pem_x509_certificate(ca.read_bytes())
    )
    return True


def test_a_bundle_carries_certificates_from_the_ca_but_never_its_key(
    first_host: RunningPlatform, tmp_path: Path
) -> None:
    bundle = tmp_path / "bundle"
    made = first_host.cli("host", "add", "host-b", "--services", "messaging,gateway", "--out", str(bundle), check=False)
    assert made.returncode == 0, made.stderr
    assert "NATS passwords of those services, the fleet's addresses" in made.stdout  # no keys it lacks
    assert "auth's keys" not in made.stdout
    files = sorted(p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file())
    assert "pki/ca.key" not in files
    assert {"pki/ca.crt", "pki/messaging.crt", "pki/gateway.crt", "pki/node-agent.crt", "fleet.json"} <= set(files)
    assert "pki/platform.key" not in files  # the agent's is a node-agent certificate, never the operator's
    ca = first_host.data_dir / "pki" / "ca.crt"
    assert (bundle / "pki" / "ca.crt").read_bytes() == ca.read_bytes()
    assert all(issued_by(bundle / "pki" / f"{name}.crt", ca) for name in ("messaging", "gateway", "node-agent"))
    passwords = json.loads((bundle / "secrets" / "nats-passwords.json").read_text())
    assert set(passwords) == {"messaging", "gateway"}  # not auth's, storage's or the registry's
    fleet = json.loads((bundle / "fleet.json").read_text())
    assert fleet["nats_url"].count(",") == 2  # every node of the cluster
    assert fleet["nats_replicas"] == 3


def test_a_registry_on_another_host_writes_the_first_hosts_repository(
    first_host: RunningPlatform, tmp_path: Path
) -> None:
    """A second registry must write the one TUF repository the agents trust, never start its own."""
    bundle = tmp_path / "registry-bundle"
    first_host.cli("host", "add", "host-r", "--services", "patch-registry", "--out", str(bundle))
    assert json.loads((bundle / "fleet.json").read_text())["services"] == ["patch-registry"]
    joining = RunningPlatform(data_dir=tmp_path / "host-r")  # only its `parley` command: never started
    refused = joining.cli("host", "join", str(bundle), check=False)
    assert refused.returncode == 2
    assert "name the first host's registry folder with --registry-folder" in refused.stderr
    (tmp_path / "empty").mkdir()
    refused = joining.cli("host", "join", str(bundle), "--registry-folder", str(tmp_path / "empty"), check=False)
    assert refused.returncode == 2
    assert "no TUF repository there" in refused.stderr
    assert not (tmp_path / "empty" / "tuf").exists()


def test_a_sqlite_archive_stays_on_the_first_host(first_host: RunningPlatform, tmp_path: Path) -> None:
    refused = first_host.cli(
        "host", "add", "host-c", "--services", "storage", "--out", str(tmp_path / "b"), check=False
    )
    assert refused.returncode == 2
    assert "storage runs on another host only when the archive is in PostgreSQL" in refused.stderr
    assert not (tmp_path / "b").exists()


@pytest.fixture(scope="module")
def host_b(first_host: RunningPlatform, tmp_path_factory: pytest.TempPathFactory) -> Iterator[JoinedHost]:
    """host-b, joined with a bundle for messaging and gateway; it must leave cleanly (Ctrl-C, exit 0)."""
    root = tmp_path_factory.mktemp("host-b")
    joined = JoinedHost.join(first_host, root, "host-b", "messaging,gateway", {"PARLEY_HEARTBEAT_SECONDS": "1"})
    try:
        yield joined
    finally:
        code = joined.stop() if joined.process.poll() is None else joined.process.returncode
    assert code == 0, joined.output()
    assert not (joined.data_dir / "client.json").exists()


async def test_a_second_host_serves_clients_and_shows_in_the_fleet(
    first_host: RunningPlatform, host_b: JoinedHost
) -> None:
    assert not (host_b.data_dir / "pki" / "ca.key").exists()

    async def both_hosts() -> str | None:
        shown = (await asyncio.to_thread(first_host.cli, "fleet", check=False)).stdout
        rows = [line.split() for line in shown.splitlines()]
        on_b = {row[0] for row in rows if "host-b" in row and "SERVING" in row}
        return shown if on_b == {"messaging", "gateway"} else None

    shown = await eventually(both_hosts, "`parley fleet` to show host-b's instances", timeout=60)
    first_rows = [line for line in shown.splitlines() if line.startswith("auth ")]
    assert first_rows  # the first host's services are there too
    assert "host-b" not in first_rows[0]

    # A client of host-b's gateway; what it sends is in history through the first host's.
    bob = ParleyClient.connect(host_b.gateway_address, ca_cert=first_host.ca_cert.read_bytes())
    await bob.register("bob", PASSWORD)
    await bob.login("bob", PASSWORD)
    channel = await bob.create_channel("across-hosts")
    await bob.send(channel.channel_id, "sent through host-b")
    alice = first_host.client()
    await alice.login("bob", PASSWORD)

    async def in_history() -> bool | None:
        page = await alice.history(channel.channel_id, limit=10)
        return True if [m.body for m in page.messages] == ["sent through host-b"] else None

    await eventually(in_history, "host-b's message in history on the first host", timeout=60)
    await bob.close()
    await alice.close()


def test_a_bundle_for_auth_carries_its_keys(first_host: RunningPlatform, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    made = first_host.cli("host", "add", "host-c", "--services", "auth", "--out", str(bundle))
    assert "NATS passwords of those services, auth's keys, the fleet's addresses" in made.stdout
    secrets = first_host.data_dir / "secrets"
    for name in ("auth-mfa-key.bin", "auth-audit-key.pem", "auth-signing-key.pem"):
        assert (bundle / "secrets" / name).read_bytes() == (secrets / name).read_bytes()
    assert not (bundle / "pki" / "ca.key").exists()
    assert set(json.loads((bundle / "secrets" / "nats-passwords.json").read_text())) == {"auth"}


async def test_the_cli_on_a_joined_hosts_folder_says_which_host_it_is_and_uses_the_fleets_doors(
    first_host: RunningPlatform, tmp_path: Path
) -> None:
    """A host without a gateway or registry of its own: its folder holds no platform to start, and
    a person acts there through the first host's gateway and registry, which its bundle names."""
    joined = JoinedHost.join(first_host, tmp_path / "host-m", "host-m", "messaging")
    try:
        here = RunningPlatform(data_dir=joined.data_dir)  # only its `parley` command
        registry = json.loads((joined.data_dir / "fleet.json").read_text())["registry_address"]
        status = here.cli("status")
        assert status.stdout.startswith(
            f"{joined.data_dir} is the folder of joined host host-m of the fleet whose first host's "
            f"patch registry is at {registry}"
        )
        assert re.search(r"^messaging +127\.0\.0\.1:\d+ +SERVING$", status.stdout, re.MULTILINE), status.stdout
        assert " up" not in status.stdout + status.stderr  # never the advice to start a second platform
        here.cli_until("fleet", shows="host-m")
        parked = here.cli("parked", check=False)  # the platform's own folder's to answer
        assert parked.returncode == 2
        assert f"{joined.data_dir} is the folder of joined host host-m" in parked.stderr
        assert "first host's folder" in parked.stderr
        assert " up" not in parked.stderr

        await (await first_host.new_user("mia")).close()  # registered through the first host's gateway
        logged_in = here.cli("login", "mia", stdin=f"{PASSWORD}\n")
        assert logged_in.stdout.startswith("logged in as mia"), logged_in.stderr
        assert here.cli("--as", "mia", "channels", check=False).returncode == 0
    finally:
        joined.stop()


@pytest.fixture
def host_c(first_host: RunningPlatform, tmp_path: Path) -> Iterator[JoinedHost]:
    """host-c, with auth and a gateway, for one test (the roll-out test's load stays as it was)."""
    joined = JoinedHost.join(
        first_host, tmp_path / "host-c", "host-c", "gateway,auth", {"PARLEY_HEARTBEAT_SECONDS": "1"}
    )
    try:
        yield joined
    finally:
        code = joined.stop() if joined.process.poll() is None else joined.process.returncode
    assert code == 0, joined.output()


async def test_logins_go_on_through_another_host_while_the_first_hosts_auth_is_stopped(
    first_host: RunningPlatform, host_c: JoinedHost
) -> None:
    async def auth_on_c() -> bool | None:
        shown = (await asyncio.to_thread(first_host.cli, "fleet", check=False)).stdout
        rows = [line.split() for line in shown.splitlines()]
        return True if any(r[:1] == ["auth"] and "host-c" in r and "SERVING" in r for r in rows) else None

    await eventually(auth_on_c, "`parley fleet` to show host-c's auth", timeout=60)
    ca = first_host.ca_cert.read_bytes()
    registering = ParleyClient.connect(host_c.gateway_address, ca_cert=ca)
    await registering.register("carol", PASSWORD)
    await registering.close()
    auth = first_host.service("auth")
    pids = [int(i["pid"]) for i in auth["instances"] if i.get("pid")]  # type: ignore[union-attr]
    assert pids
    for pid in pids:  # stopped, not killed: the first host's supervisor does not start another
        os.kill(pid, signal.SIGSTOP)
    try:
        carol = ParleyClient.connect(host_c.gateway_address, ca_cert=ca)
        await carol.login("carol", PASSWORD)  # host-c's gateway calls host-c's auth
        await carol.my_channels()  # and the token it issued is good at messaging on the first host
        await carol.close()
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


@pytest.mark.slow  # minutes of roll-out under sends: `make test-all`; make test keeps a shorter roll-out test
async def test_a_rollout_replaces_messaging_host_by_host_without_a_failed_send(
    first_host: RunningPlatform, host_b: JoinedHost
) -> None:
    operators = OperatorTokens()
    await operators.publish_on_platform(first_host.data_dir)
    for user in ("pat", "olga", "oscar"):
        operators.save_cli_login(first_host.data_dir, user)
    await cli(first_host, "--as", "pat", "patch", "key", "create", "messaging")

    # Sends through both hosts' gateways, each calling its own host's messaging.
    clients, traffic, senders = [], Traffic(), []
    for n, address in enumerate((first_host.gateway_address, host_b.gateway_address)):
        client = ParleyClient.connect(address, ca_cert=first_host.ca_cert.read_bytes())
        await client.register(f"sender{n}", PASSWORD)
        await client.login(f"sender{n}", PASSWORD)
        channel = await client.create_channel(f"rollout-{n}")
        clients.append((client, channel.channel_id))
        senders.append(asyncio.create_task(send_continuously(client, channel.channel_id, traffic)))
    try:
        rollout_id = await roll_out(first_host, "messaging", NEW_VERSION, MESSAGING_SOURCE)
        status = await rollout_ended(first_host, rollout_id)
        assert "state: done" in status, status
    finally:
        traffic.stop.set()
        await asyncio.gather(*senders)
    print(f"\nacknowledged sends: {traffic.acknowledged}; failed: {len(traffic.failures)}")
    assert traffic.failures == []

    # One step per host, each done by that host's own agent, one host after the other.
    audit = await cli(first_host, "patch", "status", rollout_id, "--audit")
    started_by = [re.search(r"node-agent@(\S+)", line) for line in audit.splitlines() if "InstanceStarted" in line]
    hosts = [m.group(1) for m in started_by if m]
    assert len(hosts) == 2, audit
    assert "host-b" in hosts
    assert hosts == sorted(hosts), audit  # host by host, in the order the plan gave

    async def new_everywhere() -> str | None:
        out = (await asyncio.to_thread(first_host.cli, "fleet", check=False)).stdout
        rows = [line.split() for line in out.splitlines() if line.startswith("messaging ")]
        return out if len(rows) == 2 and all(row[1] == NEW_VERSION for row in rows) else None

    fleet = await eventually(new_everywhere, f"messaging {NEW_VERSION} on both hosts in the fleet view", 60)
    assert any("host-b" in line.split() for line in fleet.splitlines() if line.startswith("messaging "))

    async def archived() -> int | None:
        total = sum([await history_count(client, channel_id) for client, channel_id in clients])
        return total if total >= traffic.acknowledged else None

    assert await eventually(archived, "every acknowledged send in history", 120) == traffic.acknowledged
    for client, _ in clients:
        await client.close()

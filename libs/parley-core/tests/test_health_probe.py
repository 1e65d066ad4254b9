"""`python -m parley_core.health_probe`, the command a pod's readiness and liveness probes run.

Against a real gRPC server with the runner's own TLS credentials (mutual TLS, or server TLS for
the gateway's client-facing port) and grpc's Health service, with the certificates a pod mounts:
the platform CA's certificate and the service's own, no CA key.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from parley_core.pki import ensure_pki, issue_into
from parley_core.runner import _server_credentials

SERVICE = "messaging"
TIMEOUT_S = 60.0


@dataclass
class Probed:
    server: grpc.aio.Server
    health: HealthServicer
    address: str
    pod_pki: Path


@pytest_asyncio.fixture(params=[False, True], ids=["mutual-tls", "client-facing"])
async def probed(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Probed]:
    platform = ensure_pki(tmp_path / "platform" / "pki", [SERVICE])
    pod = issue_into(platform, [SERVICE], tmp_path / "pod" / "pki")  # what parley-pki-<service> holds
    server = grpc.aio.server()
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    port = server.add_secure_port("127.0.0.1:0", _server_credentials(pod, SERVICE, client_facing=request.param))
    await server.start()
    yield Probed(server=server, health=health, address=f"127.0.0.1:{port}", pod_pki=pod.directory)
    await server.stop(grace=None)


async def probe(address: str, pki: Path) -> tuple[int, list[str]]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "parley_core.health_probe",
        "--service",
        SERVICE,
        "--address",
        address,
        "--pki",
        str(pki),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), TIMEOUT_S)
    assert process.returncode is not None
    return process.returncode, (out + err).decode().splitlines()


async def test_serving_is_zero_and_not_serving_is_not(probed: Probed) -> None:
    await probed.health.set("", health_pb2.HealthCheckResponse.SERVING)
    assert await probe(probed.address, probed.pod_pki) == (0, [f"{SERVICE} at {probed.address}: SERVING"])
    await probed.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    assert await probe(probed.address, probed.pod_pki) == (1, [f"{SERVICE} at {probed.address}: NOT_SERVING"])


async def test_a_stopped_service_is_unreachable(probed: Probed) -> None:
    await probed.health.set("", health_pb2.HealthCheckResponse.SERVING)
    await probed.server.stop(grace=None)
    assert await probe(probed.address, probed.pod_pki) == (1, [f"{SERVICE} at {probed.address}: UNREACHABLE"])


async def test_a_certificate_of_another_ca_is_not_trusted(probed: Probed, tmp_path: Path) -> None:
    await probed.health.set("", health_pb2.HealthCheckResponse.SERVING)
    stranger = ensure_pki(tmp_path / "stranger", [SERVICE])  # signs its own: the service is no peer of it
    assert await probe(probed.address, stranger.directory) == (1, [f"{SERVICE} at {probed.address}: UNREACHABLE"])


async def test_missing_certificates_are_one_line(probed: Probed, tmp_path: Path) -> None:
    code, lines = await probe(probed.address, tmp_path / "nowhere")
    assert code == 2
    assert len(lines) == 1
    assert "cannot read its certificates" in lines[0]

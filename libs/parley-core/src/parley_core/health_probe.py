"""A service's gRPC health, asked over mutual TLS: the check itself and a probe command.

The kubelet's own gRPC probe speaks plaintext and Parley's services speak mutual TLS only, so a
pod's readiness and liveness probes run this command in the service's container instead:

    python -m parley_core.health_probe --service auth --address 127.0.0.1:50051

It presents the pod's own certificate (the Health service answers any peer the platform CA
vouches for), exits 0 only when the service reports SERVING and prints one line saying why
otherwise. The node agent and `parley status` ask the same way, as the platform identity.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

if __name__ == "__main__":
    # The probe's output is its one line: grpc's own log (a refused handshake) would add more,
    # and grpc reads this when it loads.
    os.environ["GRPC_VERBOSITY"] = "NONE"

import grpc
from grpc_health.v1 import health_pb2

from parley_core.grpc_channel import secure_channel
from parley_core.pki import CA_NAME, Pki

SERVING = "SERVING"


async def check_health(pki: Pki, *, identity: str, service: str, address: str, timeout: float = 2.0) -> str:
    """SERVING, NOT_SERVING, or UNREACHABLE when nothing answers; `identity` is whose certificate
    the check presents."""
    channel = secure_channel(pki, identity=identity, address=address, peer=service)
    try:
        check = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        response = await check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))
    except grpc.aio.AioRpcError as exc:
        if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return "UNREACHABLE"
        return f"ERROR ({exc.code().name})"
    finally:
        await channel.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m parley_core.health_probe", description=__doc__.splitlines()[0])
    parser.add_argument("--service", required=True, help="the service to ask, whose certificate it presents")
    parser.add_argument("--address", required=True, help="host:port of its gRPC port, e.g. 127.0.0.1:50051")
    parser.add_argument(
        "--pki", type=Path, help="the folder of ca.crt and <service>.crt/.key (default: $PARLEY_DATA_DIR/pki)"
    )
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for the answer")
    args = parser.parse_args(argv)
    folder = args.pki or Path(os.environ.get("PARLEY_DATA_DIR", "/var/lib/parley")) / "pki"
    pki = Pki(directory=folder, ca_cert=folder / f"{CA_NAME}.crt")
    try:
        status = asyncio.run(
            check_health(pki, identity=args.service, service=args.service, address=args.address, timeout=args.timeout)
        )
    except OSError as exc:  # the certificates are not where the pod mounts them
        print(f"{args.service}: cannot read its certificates in {folder}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    if status != SERVING:
        print(f"{args.service} at {args.address}: {status}", file=sys.stderr)
        return 1
    print(f"{args.service} at {args.address}: {SERVING}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

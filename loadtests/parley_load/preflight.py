"""One check before any simulated user starts: the platform must let them register.

Load-test users register themselves. A platform started with the default, administrator-created
accounts (or invitations), refuses every one of them; without this check a run printed one
traceback per user and measured nothing.
"""

from __future__ import annotations

import grpc
from parley.auth.v1 import auth_pb2
from parley.gateway.v1 import gateway_pb2_grpc

from parley_load.target import Target

OPEN_PLATFORM = "PARLEY_REGISTRATION=open PARLEY_AUTH_REGISTRATIONS_PER_SOURCE_PER_HOUR=1000000 make run"
PROBE_TIMEOUT_S = 10.0


def require_open_registration(target: Target) -> None:
    """Exits with one line saying what to do when the gateway refuses self-registration.

    The probe registers an empty name: refused for its mode first if registration is closed,
    otherwise refused as invalid, so it creates no account and spends no registration budget.
    """
    credentials = grpc.ssl_channel_credentials(root_certificates=target.ca_cert)
    options = [("grpc.ssl_target_name_override", "gateway")]
    with grpc.secure_channel(target.gateway_address, credentials, options=options) as channel:
        try:
            gateway_pb2_grpc.GatewayStub(channel).Register(auth_pb2.RegisterRequest(), timeout=PROBE_TIMEOUT_S)
        except grpc.RpcError as exc:
            code = exc.code()
            if code == grpc.StatusCode.PERMISSION_DENIED:
                raise SystemExit(
                    f"the platform at {target.gateway_address} does not let load-test users register "
                    f"({exc.details()}); start it for load tests with `{OPEN_PLATFORM}`"
                ) from None
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise SystemExit(
                    f"no gateway answers at {target.gateway_address} ({code.name}); start the platform "
                    f"for load tests with `{OPEN_PLATFORM}`"
                ) from None

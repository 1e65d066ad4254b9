"""One way for every Parley process to connect to NATS: TLS, its own user and its own inbox."""

from __future__ import annotations

import asyncio
import logging
import ssl
from pathlib import Path
from typing import Any

from nats.aio.client import Client, ErrorCallback
from nats.js import JetStreamContext

from parley_core import nats_accounts, topology
from parley_core.natsconf import platform_nats_password

__all__ = [
    "ErrorCallback",
    "NatsUnreachable",
    "ParleyNatsClient",
    "client_tls_context",
    "connect_nats",
    "connect_nats_once",
    "js_api_prefix",
    "log_nats_error",
]

log = logging.getLogger(__name__)

RECONNECT_TIME_WAIT_S = 0.5
# How long a one-shot tool (a backup, an audit) tries to reach NATS before it says nobody answers.
ONE_SHOT_CONNECT_S = 2.0
EOF_ON_UPGRADED_TLS = "returning true from eof_received() has no effect when using ssl"


class _HarmlessTlsEofWarning(logging.Filter):
    """Drops asyncio's warning when the server closes a NATS connection.

    nats-py upgrades the plain socket to TLS after the server's INFO, so the stream protocol
    does not know it is over TLS and asks to keep the connection half-open; asyncio warns that
    this has no effect over TLS. Nothing is wrong, but the line alarms anyone reading stderr.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != EOF_ON_UPGRADED_TLS


def quiet_tls_eof_warning() -> None:
    """Install the filter once on asyncio's logger (idempotent)."""
    asyncio_log = logging.getLogger("asyncio")
    if not any(isinstance(f, _HarmlessTlsEofWarning) for f in asyncio_log.filters):
        asyncio_log.addFilter(_HarmlessTlsEofWarning())


async def log_nats_error(error: Exception) -> None:
    """Default error callback: asynchronous NATS errors (e.g. permission violations) get logged."""
    log.error("NATS error: %s", error)


class ParleyNatsClient(Client):
    """A NATS client whose JetStream calls go where its user's account reaches the API.

    A service's account imports the streams' JetStream API under its own prefix
    (nats_accounts.js_api_prefix), so every `jetstream()` of the process, the bus's and any tool's,
    uses it without each caller having to know.
    """

    def __init__(self, js_api_prefix: str) -> None:
        super().__init__()
        self.js_api_prefix = js_api_prefix

    def jetstream(self, **opts: Any) -> JetStreamContext:
        opts.setdefault("prefix", self.js_api_prefix)
        return super().jetstream(**opts)


def client_tls_context(ca_cert: Path) -> ssl.SSLContext:
    """Trust only Parley's CA and check the host name against the server certificate's SAN."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_cert))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def nats_servers(url: str) -> list[str]:
    """One URL or a comma-separated list of cluster nodes (`PARLEY_NATS_URL=tls://a:1,tls://b:2`)."""
    return [part.strip() for part in url.split(",") if part.strip()]


async def connect_nats(
    *,
    url: str,
    user: str,
    password: str,
    ca_cert: Path,
    name: str,
    error_cb: ErrorCallback | None = None,
    **kwargs: Any,
) -> Client:
    """Connect as ``user``, replies arriving on the user's own inbox prefix.

    The inbox prefix must match the subscribe permission in ``nats_accounts.permissions_for``,
    otherwise every request (including every JetStream API call) would time out. The client
    reconnects forever: a service outlives a broker restart instead of exiting.
    """
    tls = client_tls_context(ca_cert)
    client = ParleyNatsClient(nats_accounts.js_api_prefix(user))
    await _connect(client, url=url, user=user, password=password, tls=tls, name=name, error_cb=error_cb, **kwargs)
    return client


async def connect_as_platform(data_dir: Path, *, url: str, name: str, **kwargs: Any) -> Client:
    """The platform identity's connection, with the password and CA of its data folder: how the
    operator's tools (`parley parked`, the benchmarks) read the running platform's streams."""
    return await connect_nats(
        url=url,
        user=topology.PLATFORM_USER,
        password=platform_nats_password(data_dir),
        ca_cert=data_dir / "pki" / "ca.crt",
        name=name,
        **kwargs,
    )


async def _connect(
    client: Client,
    *,
    url: str,
    user: str,
    password: str,
    tls: ssl.SSLContext,
    name: str,
    error_cb: ErrorCallback | None,
    **kwargs: Any,
) -> None:
    quiet_tls_eof_warning()
    options: dict[str, Any] = {
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": RECONNECT_TIME_WAIT_S,
        # The URLs in the order given: a joined host's services name its own node first, the
        # other nodes as fallbacks (parley host join --nats-node).
        "dont_randomize": True,
        **kwargs,
    }
    await client.connect(
        servers=nats_servers(url),
        user=user,
        password=password,
        tls=tls,
        name=name,
        inbox_prefix=topology.inbox_prefix(user),
        error_cb=error_cb if error_cb is not None else log_nats_error,
        **options,
    )


class NatsUnreachable(ConnectionError):
    """No NATS server answered a one-shot tool's connect in time."""


class _QuietUntilConnected:
    """An error callback that keeps the first connect's failures for the tool's own message, then logs."""

    def __init__(self) -> None:
        self.connected = False
        self.last_error: Exception | None = None

    async def error_cb(self, error: Exception) -> None:  # a coroutine function, as nats-py requires
        if self.connected:
            await log_nats_error(error)
        else:
            self.last_error = error


async def connect_nats_once(
    *, url: str, user: str, password: str, ca_cert: Path, name: str, timeout_s: float = ONE_SHOT_CONNECT_S
) -> Client:
    """Connect for a one-shot tool: give up after ``timeout_s``, and never reconnect afterwards.

    ``allow_reconnect=False`` alone does not bound the first connect: nats-py's server selection
    retries a refused connection as often as ``max_reconnect_attempts`` allows, which is forever
    under connect_nats's default for services. So the attempt runs under a deadline instead, and
    its failures are kept quiet (no error line twice a second) and named in NatsUnreachable. A
    server that answers and refuses (a wrong password, an untrusted certificate) raises at once.
    """
    tls = client_tls_context(ca_cert)  # an unreadable CA raises here, before there is a client to close
    client, errors = ParleyNatsClient(nats_accounts.js_api_prefix(user)), _QuietUntilConnected()
    attempt = _connect(
        client,
        url=url,
        user=user,
        password=password,
        tls=tls,
        name=name,
        error_cb=errors.error_cb,
        allow_reconnect=False,
        connect_timeout=max(1, round(timeout_s)),
    )
    try:
        await asyncio.wait_for(attempt, timeout_s)
    except TimeoutError:
        await client.close()
        why = f": {errors.last_error}" if errors.last_error is not None else ""
        raise NatsUnreachable(f"no NATS server answered on {url} within {timeout_s:g} s{why}") from None
    except BaseException:
        await client.close()
        raise
    errors.connected = True
    return client


def js_api_prefix(nc: Client) -> str:
    """The JetStream API prefix a connection's calls use (its account's, for a ParleyNatsClient)."""
    return nc.js_api_prefix if isinstance(nc, ParleyNatsClient) else nats_accounts.JS_API

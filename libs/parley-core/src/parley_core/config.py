"""One typed settings object per process, read from the environment and an optional TOML file.

Precedence: explicit arguments, then PARLEY_* environment variables, then the file named by
PARLEY_CONFIG_FILE, then defaults. Every default suits a laptop started by `parley up`.
"""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from parley_core.consumer_policy import EPHEMERAL_QUOTA
from parley_core.natsconf import NATS_PASSWORDS_FILE
from parley_core.topology import PARKED_MAX_BYTES, PARKED_MAX_MSGS, STREAMS, StreamSpec, with_parked_limits

TraceExporter = Literal["none", "console", "otlp"]
# open: anyone may register; invite: with a single-use invitation from an administrator;
# admin: accounts are created by an administrator only.
RegistrationMode = Literal["open", "invite", "admin"]
EventLoop = Literal["asyncio", "uvloop"]
# The setting through which a process learns each peer's address (see the Peers fields below).
# Where a call may be sent again on an instance no roll-out is trying out (the gateway's callers).
STABLE_ADDRESS_ENV = {"messaging": "PARLEY_MESSAGING_STABLE_ADDR"}
PEER_ADDRESS_ENV = {
    "auth": "PARLEY_AUTH_ADDR",
    "messaging": "PARLEY_MESSAGING_ADDR",
    "storage": "PARLEY_STORAGE_ADDR",
    "patch-registry": "PARLEY_REGISTRY_ADDR",
}

# Written into a data folder by `parley backup restore`; while it exists the event log still has
# to be re-seeded from the restored archive, which `parley up` does before starting services.
RESTORED_MARKER = Path("storage") / "restored-from-backup.json"
# The patch registry's folder in the data folder: its TUF release repository and signing keys.
REGISTRY_FOLDER = "patch-registry"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PARLEY_", extra="ignore")

    service: str = ""
    instance_id: str = Field(default_factory=lambda: uuid.uuid4().hex[:12])
    host_name: str = Field(default_factory=socket.gethostname)
    data_dir: Path = Path(".parley")

    # Where this instance listens; port 0 picks a free one.
    listen_host: str = "127.0.0.1"
    listen_port: int = 0
    # The node agent holds `listen_port` for this instance (a bound socket that never listens,
    # parley_agent.shared_port.claim): the instance joins it with SO_REUSEPORT.
    listen_port_held: bool = False
    # host:port this instance also listens on together with the other instances of its service
    # (SO_REUSEPORT): the gateway's client address under the node agent, which claims it first
    # (parley_agent.shared_port). Empty: none.
    shared_listen_address: str = ""
    # host:port callers reach this instance at, its node agent's front door (set by the agent):
    # what its heartbeats name, so that other hosts' agents find a patch registry. Empty: its own.
    front_door_address: str = ""
    # The file in which the node agent writes this instance's percent of the shared port's new
    # connections during a roll-out (parley_core.port_share). Empty: an even share.
    shared_port_share_file: str = ""
    # The gateway's address for browsers (host:port, TLS): the Gateway API over the Connect
    # protocol and the web app's files from `web_root` (the built web/dist). Empty: none.
    web_listen_address: str = ""
    web_root: str = ""

    nats_url: str = ""
    nats_user: str = ""
    nats_password: str = ""
    # Nodes that keep each stream: 3 on a JetStream cluster (`parley up --nats-cluster 3`).
    nats_replicas: int = 1

    # Peers, as host:port; the composition root passes them.
    auth_addr: str = ""
    messaging_addr: str = ""
    storage_addr: str = ""
    registry_addr: str = ""
    # The messaging front door's stable address (parley_agent.front_door): only instances no
    # roll-out is trying out. The gateway sends a call a canary failed there once more, when
    # repeating it is safe. Empty: no second try.
    messaging_stable_addr: str = ""

    database_url: str = ""

    # host:port of this instance's Prometheus /metrics (port 0: a free one, named in
    # <data>/metrics/targets/ for Prometheus's file_sd); empty: no metrics endpoint.
    metrics_listen: str = ""
    # Serve it over TLS with the instance's own certificate from the platform CA, and answer only
    # a scraper that presents a certificate from that CA (`parley up` issues pki/prometheus.crt).
    metrics_tls: bool = True

    registration: RegistrationMode = "admin"

    trace_exporter: TraceExporter = "none"
    otlp_endpoint: str = "http://127.0.0.1:4317"
    log_level: str = "INFO"
    # The event loop a service process runs on (PARLEY_EVENT_LOOP); see parley_core.runner.event_loop.
    event_loop: EventLoop = "asyncio"

    grace_seconds: float = Field(default=10.0, gt=0, le=300)
    heartbeat_seconds: float = Field(default=5.0, gt=0)
    # 0 keeps connections for ever. A node agent running several instances behind one address
    # sets it, so callers' connections move off an instance (graceful GOAWAY) before it drains.
    max_connection_age_seconds: float = Field(default=0.0, ge=0)
    # How long a new connection to any service may take to finish its TLS handshake; and for the
    # client-facing server (the gateway), how long one with no call in flight stays open and how
    # many connections one source (an IPv4 address, an IPv6 /64) may hold open at once
    # (parley_core.connections).
    client_handshake_timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    client_idle_seconds: float = Field(default=300.0, gt=0)
    client_connections_per_source: int = Field(default=100, gt=0)
    # PARKED's bounds: full, it refuses new parked copies and keeps the oldest (topology.py).
    parked_max_bytes: int = Field(default=PARKED_MAX_BYTES, gt=0)
    parked_max_msgs: int = Field(default=PARKED_MAX_MSGS, gt=0)
    # Ephemeral consumers one service may keep on one stream, all its instances together
    # (`parley up`'s consumer guard deletes the rest: parley_core.consumer_policy).
    consumer_quota: int = Field(default=EPHEMERAL_QUOTA, gt=0)

    @property
    def streams(self) -> tuple[StreamSpec, ...]:
        """Every stream as declared, with the limits these settings give them."""
        return with_parked_limits(STREAMS, max_bytes=self.parked_max_bytes, max_msgs=self.parked_max_msgs)

    @property
    def pki_dir(self) -> Path:
        return self.data_dir / "pki"

    @property
    def secrets_dir(self) -> Path:
        return self.data_dir / "secrets"

    @property
    def nats_passwords_file(self) -> Path:
        return self.data_dir / NATS_PASSWORDS_FILE

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get("PARLEY_CONFIG_FILE")
        if config_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(config_file)))
        return tuple(sources)

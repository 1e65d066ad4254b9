"""The NATS cluster node a joined host runs (`parley host add NAME --nats-node`, nats_handover).

Its configuration is the one `parley up --nats-cluster 3` gives its own nodes
(natsconf.render_server_config with a ClusterConfig): the fleet's accounts and users, TLS with
the platform's nats certificate, routes with mutual TLS and the route password to the nodes that
stay on the first host, under the server name of the node it took over. Its store is its own,
encrypted with a key of this host's (never shared: JetStream replicates over the routes, not
files).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from parley_core.files import ensure_private_dir, write_private_file
from parley_core.nats_process import NatsServerProcess
from parley_core.natsconf import ClusterConfig, ensure_nats_passwords, render_server_config
from parley_core.net import free_port, host_address
from parley_core.pki import Pki


class JoinedNatsNode:
    def __init__(self, data_dir: Path, node: dict[str, Any], pki: Pki) -> None:
        # As `parley up` keeps its own nodes' (platform.py loads the agent: only `host join` needs it).
        from parley_cli.platform_nats import CLUSTER_NAME, STORE_KEY_FILE, ensure_store_key

        self.name = str(node["name"])
        folder = data_dir / "nats"
        ensure_private_dir(folder)
        passwords = ensure_nats_passwords(data_dir / "secrets" / "nats-passwords.json", [])
        host = host_address()  # the host add bundle's nats certificate names it
        port, route_port = free_port(host), free_port(host)
        self.route = f"{host}:{route_port}"
        config = render_server_config(
            host=host,
            port=port,
            store_dir=folder / "jetstream",
            pki=pki,
            passwords=passwords,
            server_name=self.name,
            store_cipher_key=ensure_store_key(data_dir / "secrets" / STORE_KEY_FILE),
            cluster=ClusterConfig.routed(
                name=CLUSTER_NAME, host=host, port=route_port, routes=(self.route, *node["routes"]), passwords=passwords
            ),
        )
        config_path = folder / "nats-server.conf"
        write_private_file(config_path, config.encode())
        self.process = NatsServerProcess(
            config_path=config_path, host=host, port=port, log_path=data_dir / "logs" / "nats-server.log"
        )

    def state(self) -> dict[str, Any]:
        running = self.process.running
        return {
            "name": self.name,
            "url": self.process.url,
            "route": self.route,
            "pid": self.process.pid if running else None,
            "running": running,
        }

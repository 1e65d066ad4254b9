"""A database host of its own: PostgreSQL in one namespace, on that namespace's address, reached
from another host over the bridge (what the namespace fleet test archives into)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from parley_testing.netns import namespaces_on_a_bridge, netns_available
from parley_testing.postgres import postgres_missing, postgres_server

REASON = netns_available() or postgres_missing()
pytestmark = pytest.mark.skipif(bool(REASON), reason=REASON or "namespaces and PostgreSQL here")

ASK = "import psycopg, sys; print(psycopg.connect(sys.argv[1]).execute('select inet_server_addr()').fetchone()[0])"


def test_postgres_on_a_database_host_is_reached_from_another_host_only_at_its_address() -> None:
    with namespaces_on_a_bridge(2) as bridge:
        app, db = bridge.hosts
        with postgres_server(listen=db.address, within=db.command, trusted=(bridge.network,)) as server:
            assert server.process is not None
            in_db = subprocess.run(["ip", "netns", "pids", db.name], capture_output=True, text=True, check=True)
            assert str(server.process.pid) in in_db.stdout.split(), "the server runs in the database host"
            dsn = f"postgresql://postgres@{db.address}:{server.port}/postgres"
            asked = app.run([sys.executable, "-c", ASK, dsn])
            assert asked.stdout.strip() == db.address, asked.stderr
            # The database host's loopback is its own: on the app host nothing answers there.
            local = app.run([sys.executable, "-c", ASK, f"postgresql://postgres@127.0.0.1:{server.port}/postgres"])
            assert local.returncode != 0

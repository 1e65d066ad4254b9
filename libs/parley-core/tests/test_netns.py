"""The namespaces fixture: hosts with addresses of their own reach each other over the bridge, and
nothing of it is left after the test (even after a failure inside)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from parley_testing.netns import Bridge, namespaces_on_a_bridge, netns_available
from parley_testing.waiting import wait_until

REASON = netns_available()
pytestmark = pytest.mark.skipif(bool(REASON), reason=REASON or "namespaces available")

# Listens on the namespace's address, answers one connection with its own address.
SERVE = """
import socket, sys
s = socket.socket(); s.bind((sys.argv[1], 0)); s.listen(); print(s.getsockname()[1], flush=True)
c, _ = s.accept(); c.sendall(sys.argv[1].encode()); c.close()
"""
ASK = "import socket, sys; print(socket.create_connection((sys.argv[1], int(sys.argv[2])), 10).recv(64).decode())"


def _links() -> str:
    return subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout


def test_a_server_in_one_namespace_is_reached_from_another_and_from_the_root_namespace() -> None:
    with namespaces_on_a_bridge(3) as bridge:
        a, b, _ = bridge.hosts
        assert a.address != b.address
        for asker in (b.command, list):  # from host B, then from the test's own (root) namespace
            server = subprocess.Popen(a.command([sys.executable, "-c", SERVE, a.address]), stdout=subprocess.PIPE)
            assert server.stdout is not None
            port = server.stdout.readline().strip().decode()
            got = subprocess.run(
                asker([sys.executable, "-c", ASK, a.address, port]), capture_output=True, text=True, check=False
            )
            assert got.stdout.strip() == a.address, got.stderr
            assert server.wait(timeout=10) == 0
        # A's loopback is its own: nothing listens there for B.
        loop = b.run([sys.executable, "-c", ASK, "127.0.0.1", port])
        assert loop.returncode != 0


def _fail_with_a_process_left(made: dict[str, object]) -> None:
    with namespaces_on_a_bridge(2) as bridge:
        made["bridge"] = bridge
        host = bridge.hosts[0]
        made["sleeper"] = subprocess.Popen(host.command(["sleep", "600"]))

        # In the namespace before the failure: `ip netns exec` takes a moment to enter it and exec.
        def inside() -> bool:
            listed = subprocess.run(["ip", "netns", "pids", host.name], capture_output=True, text=True, check=False)
            return bool(listed.stdout.strip())

        wait_until(inside, timeout=10, what="the sleeper to run inside the namespace")
        raise RuntimeError("the test failed")


def test_everything_is_removed_even_when_the_test_fails_inside() -> None:
    made: dict[str, object] = {}
    with pytest.raises(RuntimeError):
        _fail_with_a_process_left(made)
    bridge, sleeper = made["bridge"], made["sleeper"]
    assert isinstance(bridge, Bridge)
    assert isinstance(sleeper, subprocess.Popen)
    assert sleeper.wait(timeout=10) != 0, "a process left in a namespace is killed"
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert not [h.name for h in bridge.hosts if h.name in namespaces]
    assert bridge.name not in _links()

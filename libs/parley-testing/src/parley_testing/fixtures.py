"""Parley's pytest plugin: every fixture that starts a real server lives here."""

import os
import shutil
import tempfile

import pytest

from parley_testing.nats import NatsTestServer, nats_server, pki
from parley_testing.platform import RunningPlatform, platform
from parley_testing.postgres import PrivatePostgres, private_postgres
from parley_testing.stack import Stack, closed_stack, invite_stack, stack
from parley_testing.waiting import wait_until

__all__ = [
    "NatsTestServer",
    "PrivatePostgres",
    "RunningPlatform",
    "Stack",
    "closed_stack",
    "invite_stack",
    "nats_server",
    "pki",
    "platform",
    "private_postgres",
    "stack",
    "wait_until",
]


def pytest_configure(config: pytest.Config) -> None:
    """Tests never read or write the user's own configuration (`parley up` notes its data folder
    in $XDG_CONFIG_HOME/parley): each test process, and what it starts, has a folder of its own."""
    config.parley_config_home = os.environ["XDG_CONFIG_HOME"] = tempfile.mkdtemp(prefix="parley-test-config-")  # type: ignore[attr-defined]


def pytest_unconfigure(config: pytest.Config) -> None:
    if home := getattr(config, "parley_config_home", None):
        shutil.rmtree(home, ignore_errors=True)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Modules that start the whole platform (marked e2e, or on the `platform` fixture) run first,
    the rest after them, each module whole and otherwise in collection order. `make test` hands
    out modules in this order (`--dist loadfile --no-loadscope-reorder`): the long ones start
    early and the many short ones even out the end, so no worker is left with a two-minute module
    while the other idles (xdist's own order, by number of tests, put the one-test e2e modules,
    the longest, last)."""
    platform_modules = {
        item.path for item in items if item.get_closest_marker("e2e") or "platform" in getattr(item, "fixturenames", ())
    }
    items.sort(key=lambda item: item.path not in platform_modules)  # stable: modules stay whole

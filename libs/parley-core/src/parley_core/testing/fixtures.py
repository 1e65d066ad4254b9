"""Parley's pytest plugin: every fixture that starts a real server lives here."""

import os
import shutil
import tempfile

import pytest

from parley_core.testing.nats import NatsTestServer, nats_server, pki
from parley_core.testing.platform import RunningPlatform, platform
from parley_core.testing.postgres import PrivatePostgres, private_postgres
from parley_core.testing.stack import Stack, closed_stack, invite_stack, stack
from parley_core.testing.waiting import wait_until

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

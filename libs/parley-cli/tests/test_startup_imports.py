"""Every `parley` command starts by importing parley_cli.main and building its parser. That path
must not load the service runner's stack (OpenTelemetry, the settings model, the node agent with
TUF): they took most of a second per command, and only the commands that use them import them."""

from __future__ import annotations

import json
import subprocess
import sys

# Top-level packages/modules that must stay out until a command needs them.
HEAVY = (
    "opentelemetry",
    "pydantic_settings",
    "parley_core.runner",
    "parley_core.telemetry",
    "parley_core.config",
    "parley_agent",
    "tuf",
    "securesystemslib",
)

STARTUP = """
import json, sys
import parley_cli.main
parley_cli.main.build_parser()
print(json.dumps(sorted(sys.modules)))
"""

# What a command that does use them loads: every name above must be a module that exists there, or
# the check above would pass whatever the CLI imported.
IN_USE = """
import json, sys
import parley_core.runner, parley_agent, parley_cli.publishing
print(json.dumps(sorted(sys.modules)))
"""


def _loaded(code: str) -> list[str]:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    loaded: list[str] = json.loads(done.stdout)
    return loaded


def _heavy(modules: list[str]) -> set[str]:
    return {h for h in HEAVY for m in modules if m == h or m.startswith(h + ".")}


def test_cli_startup_leaves_the_heavy_modules_unloaded() -> None:
    loaded = _loaded(STARTUP)
    assert "parley_cli.admin" in loaded  # the whole parser was built, not an empty import
    assert _heavy(loaded) == set()


def test_the_heavy_modules_are_real_names() -> None:
    assert _heavy(_loaded(IN_USE)) == set(HEAVY)

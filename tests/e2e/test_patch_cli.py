"""`parley fleet`, `parley advisories …` and `parley patch …` against the platform as `make run` starts it.

Auth does not hand out the operator role yet (its RBAC is being built), so the test publishes a
signing key of its own on the AUTH stream and saves operator tokens where `parley login` would
(parley_testing.operators).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from parley_core.topology import SERVICES
from parley_testing.operators import OperatorTokens
from parley_testing.platform import RunningPlatform

pytestmark = pytest.mark.e2e
# The shared OSV test data: $PARLEY_OSV_DIR, else shared/ beside the clone (as CI has it).
_REPO = Path(__file__).resolve().parents[2]
OSV_DIR = next(
    (
        p
        for p in (Path(os.environ.get("PARLEY_OSV_DIR") or "/nonexistent"), _REPO.parent / "shared" / "data" / "osv")
        if p.is_dir()
    ),
    Path("/work/shared/data/osv"),
)


def test_fleet_lists_every_service(platform: RunningPlatform) -> None:
    for service in SERVICES:  # each appears with its first heartbeat (the agent names instances)
        out = platform.cli_until("fleet", shows=f"{service}-v0_1_0-")
    assert "SERVING" in out


def test_people_without_the_operator_role_are_refused(platform: RunningPlatform) -> None:
    platform.cli("register", "mallory", stdin="a-long-enough-passphrase\n")
    platform.cli("login", "mallory", stdin="a-long-enough-passphrase\n")
    refused = platform.cli("--as", "mallory", "advisories", "import", str(OSV_DIR), check=False)
    assert refused.returncode == 1
    assert "PERMISSION_DENIED" in refused.stderr
    assert "permission, held by admin and operator; you are member" in refused.stderr


@pytest.mark.skipif(not OSV_DIR.is_dir(), reason=f"OSV test data not found at {OSV_DIR}")
def test_operator_flow_publish_plan_approve_rollback(platform: RunningPlatform, tmp_path: Path) -> None:
    operators = OperatorTokens()
    asyncio.run(operators.publish_on_platform(platform.data_dir))
    for user in ("olga", "oscar", "pat"):
        operators.save_cli_login(platform.data_dir, user)

    imported = platform.cli_until("--as", "olga", "advisories", "import", str(OSV_DIR), shows="imported")
    assert "imported 30" in imported or "unchanged 30" in imported
    assert platform.cli("advisories", "list", check=False).returncode in (0, 1)  # 1 when something is overdue

    wheel = tmp_path / "parley_messaging-0.9.0-py3-none-any.whl"
    wheel.write_bytes(b"not installed by this test")
    no_key = platform.cli("--as", "pat", "patch", "publish", "messaging", "0.9.0", "--wheel", str(wheel), check=False)
    assert no_key.returncode == 2
    assert "parley patch key create messaging" in no_key.stderr
    created = platform.cli("--as", "pat", "patch", "key", "create", "messaging").stdout
    assert "messaging releases are signed by key" in created
    key_file = platform.data_dir / "cli" / "keys" / "messaging.pem"
    assert key_file.stat().st_mode & 0o777 == 0o600
    out = platform.cli(
        "--as", "pat", "patch", "publish", "messaging", "0.9.0", "--wheel", str(wheel), "--fixes", "PYSEC-2023-192"
    ).stdout
    assert "published messaging 0.9.0" in out
    assert "messaging" in platform.cli("patch", "list").stdout

    planned = platform.cli("--as", "olga", "patch", "rollout", "messaging", "0.9.0").stdout
    rollout_id = planned.split()[1].rstrip(":")
    assert "state: planned" in planned
    own = platform.cli("--as", "olga", "patch", "approve", rollout_id, check=False)
    assert own.returncode == 1
    assert "someone other than" in own.stderr
    publisher = platform.cli("--as", "pat", "patch", "approve", rollout_id, check=False)
    assert "published the release" in publisher.stderr
    approved = platform.cli("--as", "oscar", "patch", "approve", rollout_id).stdout
    assert "approved by oscar" in approved  # the caller's own name, from its saved login
    platform.cli_until("patch", "status", rollout_id, shows="state: canary")
    rolled = platform.cli("--as", "oscar", "patch", "rollback", rollout_id, "--reason", "not today").stdout
    assert "state: rolling_back (not today)" in rolled
    # The node agent in `parley up` finishes the rollback (nothing was replaced yet).
    audit = platform.cli_until("patch", "status", rollout_id, "--audit", shows="state: rolled_back")
    for event in ("RolloutPlanned", "RolloutApproved", "StepStarted", "RollbackStarted", "RolloutRolledBack"):
        assert event in audit
    # Every service's base version is a published release (`parley up` publishes it on its first
    # start), so that a revert can return to it; with no finished roll-out there is nothing to revert.
    assert "messaging/parley_messaging-0.1.0-" in platform.cli_until("patch", "list", shows="parley_messaging-0.1.0")
    nothing = platform.cli("--as", "olga", "patch", "revert", "messaging", check=False)
    assert nothing.returncode == 1
    assert "no finished roll-out to revert" in nothing.stderr
    unexplained = platform.cli("--as", "olga", "patch", "rollout", "messaging", "0.9.0", "--force", check=False)
    assert unexplained.returncode == 2
    assert "--force needs a --reason" in unexplained.stderr

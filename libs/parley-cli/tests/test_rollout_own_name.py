"""`patch rollout` names its planner, the --as user, even before storage's archive has that
user's registration: the saved login knows the user's id and name (registry_connection.own_name)."""

from __future__ import annotations

from pathlib import Path

import pytest
from parley.auth.v1 import auth_pb2
from parley.patch.v1 import patch_pb2

from parley_cli.registry_connection import own_name
from parley_cli.rollout_view import planned
from parley_cli.saved_login import save_login


def test_the_planner_is_named_from_the_saved_login(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    save_login(tmp_path / "cli" / "olga.json", auth_pb2.LoginResponse(access_token="t", user_id="5f6c0000"))
    names = own_name(tmp_path, "Olga")  # logins are saved under the casefolded name
    assert names == {"5f6c0000": "Olga"}
    planned(patch_pb2.Rollout(rollout_id="r-1", service="messaging", to_version="0.2.0", planned_by="5f6c0000"), names)
    assert "planned by Olga" in capsys.readouterr().out
    assert own_name(tmp_path, "oscar") == {}  # not logged in here: ids, as before
    assert own_name(tmp_path, None) == {}

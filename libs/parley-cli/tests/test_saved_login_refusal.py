"""A command on a saved login whose session is over names the command that logs in again, whether
the renewal or the call itself (a session revoked while its access token still runs) found it."""

from __future__ import annotations

import grpc

from parley_cli.saved_login import as_saved_login_refusal
from parley_client import ParleyError

UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED


def test_a_revoked_or_expired_session_says_to_run_parley_login() -> None:
    for said in ("this session was revoked; log in again", "access token expired; log in again"):
        shown = as_saved_login_refusal("bob", ParleyError(UNAUTHENTICATED, said))
        assert shown.message == f"the saved login of bob ended ({said}): run `parley login bob`"
        assert shown.code == UNAUTHENTICATED


def test_other_refusals_stay_as_they_were() -> None:
    renewal = ParleyError(UNAUTHENTICATED, "the saved login of bob ended (x; log in again): run `parley login bob`")
    disabled = ParleyError(UNAUTHENTICATED, "this account is disabled; ask an administrator")
    denied = ParleyError(grpc.StatusCode.PERMISSION_DENIED, "only the channel's owner may do this; log in again")
    for refusal in (renewal, disabled, denied):
        assert as_saved_login_refusal("bob", refusal) is refusal

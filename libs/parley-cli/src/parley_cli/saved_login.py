"""The CLI's saved logins (<data-dir>/cli/<user>.json, 0600): a session's tokens, renewed before
the access token expires, so a login lasts as long as its session (30 days), not 15 minutes.

Several CLI processes may use one saved login at once (a chat and a script's sends). A refresh
token works once, and presenting a spent one revokes the whole session (auth's reuse detection),
so a renewal takes a lock beside the file and first looks whether another process renewed it.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import time
from functools import partial
from pathlib import Path
from typing import Any

import grpc
from parley.auth.v1 import auth_pb2

from parley_client import ParleyClient, ParleyError
from parley_client.session import TOKEN_LIFETIME_S
from parley_core.files import ensure_private_dir, write_private_file


def save_login(path: Path, response: auth_pb2.LoginResponse) -> None:
    ensure_private_dir(path.parent)
    saved = {
        "access_token": response.access_token,
        "user_id": response.user_id,
        "refresh_token": response.refresh_token,
        "expires_at_unix": response.expires_at_unix,
        "lifetime_s": max(response.expires_at_unix - time.time(), 0.0),  # as issued: when to renew
    }
    write_private_file(path, json.dumps(saved).encode())


def saved_logins(folder: Path) -> list[str]:
    """The users with a saved login in `folder` (<data-dir>/cli), as their files name them (casefolded)."""
    if not folder.is_dir():
        return []
    return sorted(path.stem for path in folder.glob("*.json"))


def _load(path: Path) -> dict[str, Any]:
    saved: dict[str, Any] = json.loads(path.read_text())
    return saved


def _adopt(client: ParleyClient, saved: dict[str, Any]) -> None:
    client.set_tokens(
        auth_pb2.LoginResponse(
            access_token=saved["access_token"],
            user_id=saved["user_id"],
            refresh_token=saved.get("refresh_token", ""),
            expires_at_unix=int(saved.get("expires_at_unix") or 0),
        ),
        lifetime_s=float(saved.get("lifetime_s") or TOKEN_LIFETIME_S),
    )


def use_saved_login(client: ParleyClient, path: Path, username: str) -> None:
    """The saved session on `client`, renewed through the file while the client runs. A login
    saved by an older CLI has no refresh token and simply expires."""
    saved = _load(path)
    _adopt(client, saved)
    if client.refresh_token:
        client.keep_logged_in(partial(_renew, path, username))


async def _renew(path: Path, username: str, client: ParleyClient) -> None:
    lock = os.open(path.with_name(path.name + ".lock"), os.O_CREAT | os.O_RDWR, 0o600)
    try:
        await asyncio.to_thread(fcntl.flock, lock, fcntl.LOCK_EX)
        saved = _load(path)
        if float(saved.get("expires_at_unix") or 0) > (client.expires_at or 0):
            _adopt(client, saved)  # another process renewed the session meanwhile
            return
        try:
            save_login(path, await client.refresh())
        except ParleyError as exc:
            raise login_ended(username, exc) from None
    finally:
        os.close(lock)  # releases the lock


def login_ended(username: str, exc: ParleyError) -> ParleyError:
    """The refusal of a saved login's session, saying which command starts a new one."""
    return ParleyError(exc.code, f"the saved login of {username} ended ({exc.message}): run `parley login {username}`")


def as_saved_login_refusal(username: str, exc: ParleyError) -> ParleyError:
    """`exc` as a command on `username`'s saved login shows it: a session the platform no longer
    takes (revoked, signed out, expired: its answer says to log in again) names `parley login`,
    whether the refresh or the call itself found it over."""
    over = exc.code == grpc.StatusCode.UNAUTHENTICATED and "log in again" in exc.message
    return login_ended(username, exc) if over and "parley login" not in exc.message else exc

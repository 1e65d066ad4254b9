"""`parley admin ...`: account administration by the operator, straight to auth over mutual TLS.

The operator's tooling holds the platform certificate from the data folder, which auth
accepts for account administration without a user token: that is how the first owner of a
fresh installation is made (`parley admin create-user alice --role owner`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc
from parley.auth.v1 import auth_pb2, auth_pb2_grpc

from parley_cli.arguments import add_reason_option, command, command_group
from parley_cli.layout import utc_minute, utc_second
from parley_cli.signin import read_password
from parley_cli.state import load_running_state
from parley_cli.terminal import shown
from parley_client import ParleyError
from parley_core.grpc_channel import secure_channel
from parley_core.rbac import ROLES
from parley_core.topology import PLATFORM_USER

TIMEOUT_S = 30.0
LOOKUP_BATCH = 200  # auth's limit per LookupUsers call


@asynccontextmanager
async def _auth(args: argparse.Namespace) -> AsyncIterator[auth_pb2_grpc.AuthServiceAsyncStub]:
    from parley_core.pki import ensure_pki

    address = load_running_state(args.data_dir)["services"]["auth"]["address"]
    pki = ensure_pki(args.data_dir / "pki", [PLATFORM_USER])
    channel = secure_channel(pki, identity=PLATFORM_USER, address=address, peer="auth")
    try:
        yield auth_pb2_grpc.AuthServiceStub(channel)
    except grpc.aio.AioRpcError as exc:
        raise ParleyError(exc.code(), exc.details() or exc.code().name) from None
    finally:
        await channel.close()


async def _account(stub: auth_pb2_grpc.AuthServiceAsyncStub, username: str) -> auth_pb2.Account:
    return await stub.GetAccount(auth_pb2.GetAccountRequest(username=username), timeout=TIMEOUT_S)


@asynccontextmanager
async def _named_account(
    args: argparse.Namespace,
) -> AsyncIterator[tuple[auth_pb2_grpc.AuthServiceAsyncStub, auth_pb2.Account]]:
    """The operator's auth connection and the account the command names (args.username)."""
    async with _auth(args) as stub:
        yield stub, await _account(stub, args.username)


async def account_of(args: argparse.Namespace, username: str) -> auth_pb2.Account:
    """One account by name from auth's directory (NOT_FOUND as ParleyError when there is none)."""
    async with _auth(args) as stub:
        return await _account(stub, username)


async def usernames(args: argparse.Namespace, user_ids: list[str]) -> dict[str, str]:
    """user id -> username from auth's directory, for the operator's tooling (unknown ids left out)."""
    names: dict[str, str] = {}
    async with _auth(args) as stub:
        for start in range(0, len(user_ids), LOOKUP_BATCH):
            request = auth_pb2.LookupUsersRequest(user_ids=user_ids[start : start + LOOKUP_BATCH])
            found = await stub.LookupUsers(request, timeout=TIMEOUT_S)
            names.update({u.user_id: u.username for u in found.users})
    return names


def _show(account: auth_pb2.Account) -> str:
    state = "disabled" if account.disabled else "active"
    line = f"{shown(account.username)} ({account.user_id}) role={shown(account.role)} {state}"
    if account.locked_addresses:
        until = utc_second(account.locked_until_unix)
        line += (
            f" LOCKED OUT from {account.locked_addresses} address(es) until {until} "
            f"(`parley admin unlock {shown(account.username)}` ends it)"
        )
    return line


async def cmd_create_user(args: argparse.Namespace) -> int:
    async with _auth(args) as stub:  # a folder that is no running platform's is said before the password is asked
        password = read_password(args)
        request = auth_pb2.CreateUserRequest(username=args.username, password=password, role=args.role)
        account = await stub.CreateUser(request, timeout=TIMEOUT_S)
    print(f"created {_show(account)}")
    return 0


async def cmd_set_role(args: argparse.Namespace) -> int:
    async with _named_account(args) as (stub, account):
        request = auth_pb2.AssignRoleRequest(user_id=account.user_id, role=args.role)
        print(_show(await stub.AssignRole(request, timeout=TIMEOUT_S)))
    return 0


async def cmd_disable(args: argparse.Namespace) -> int:
    async with _named_account(args) as (stub, account):
        request = auth_pb2.SetAccountDisabledRequest(
            user_id=account.user_id, disabled=args.disabled, reason=args.reason
        )
        print(_show(await stub.SetAccountDisabled(request, timeout=TIMEOUT_S)))
    return 0


async def cmd_reset_mfa(args: argparse.Namespace) -> int:
    async with _named_account(args) as (stub, account):
        request = auth_pb2.AccountActionRequest(user_id=account.user_id, reason=args.reason)
        await stub.ResetMfa(request, timeout=TIMEOUT_S)
    print(f"two-factor authentication of {shown(account.username)} removed and every session of theirs revoked;")
    print("they log in with the password alone and enrol a new authenticator")
    return 0


async def cmd_unlock(args: argparse.Namespace) -> int:
    async with _named_account(args) as (stub, account):
        request = auth_pb2.AccountActionRequest(user_id=account.user_id, reason=args.reason)
        print(_show(await stub.UnlockAccount(request, timeout=TIMEOUT_S)))
    print(f"{shown(account.username)} may log in again from every address; their failed attempts are forgotten")
    return 0


async def cmd_lift_slowdown(args: argparse.Namespace) -> int:
    async with _auth(args) as stub:
        request = auth_pb2.LiftSourceSlowdownRequest(source=args.source, reason=args.reason)
        lifted = await stub.LiftSourceSlowdown(request, timeout=TIMEOUT_S)
    until = utc_second(lifted.was_slowed_until_unix)
    print(f"logins from {shown(lifted.source)} are let through again (it was slowed down until {until})")
    return 0


async def cmd_show(args: argparse.Namespace) -> int:
    print(_show(await account_of(args, args.username)))
    return 0


async def cmd_invite(args: argparse.Namespace) -> int:
    async with _auth(args) as stub:
        request = auth_pb2.CreateInviteRequest(role=args.role, valid_hours=args.hours)
        invite = await stub.CreateInvite(request, timeout=TIMEOUT_S)
    print(f"invite code (single use, role {invite.role}, expires {utc_minute(invite.expires_at_unix)}):")
    print(invite.invite_code)
    print(
        "it registers an account (`parley register NAME --invite CODE`) where the platform was started "
        "with PARLEY_REGISTRATION=invite; otherwise create accounts with `parley admin create-user`",
        file=sys.stderr,
    )
    return 0


async def cmd_rotate_signing_key(args: argparse.Namespace) -> int:
    async with _auth(args) as stub:
        key = await stub.RotateSigningKey(auth_pb2.RotateSigningKeyRequest(), timeout=TIMEOUT_S)
    print(f"signing with new key {key.key_id}; auth retires the old one once every token it signed has expired")
    return 0


async def cmd_retire_signing_key(args: argparse.Namespace) -> int:
    async with _auth(args) as stub:
        key = await stub.RetireSigningKey(auth_pb2.RetireSigningKeyRequest(key_id=args.key_id), timeout=TIMEOUT_S)
    print(f"retired {key.key_id}: tokens it signed are refused by every service")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    commands = command_group(sub, "admin", help="account administration (operator, over mutual TLS)")

    create = command(
        commands,
        "create-user",
        cmd_create_user,
        help="create an account; its password from a prompt, stdin or $PARLEY_PASSWORD",
        description="Create an account as the operator (mutual TLS with the data folder's platform identity). "
        "The new account's password is read from a prompt, from the first line of standard input, or from "
        "$PARLEY_PASSWORD (at least 10 characters, not containing the name, not easy to guess); the user "
        "changes it later with `parley --as NAME password`.",
    )
    create.add_argument("username")
    create.add_argument("--role", choices=ROLES, default="member")

    role = command(commands, "set-role", cmd_set_role, help="grant a role (replacing the current one)")
    role.add_argument("username")
    role.add_argument("role", choices=ROLES)

    disable = command(commands, "disable", cmd_disable, help="disable an account: its sessions stop working at once")
    disable.add_argument("username")
    add_reason_option(disable)
    disable.set_defaults(disabled=True)

    enable = command(commands, "enable", cmd_disable, help="re-enable a disabled account")
    enable.add_argument("username")
    enable.set_defaults(disabled=False, reason="")

    reset_mfa = command(
        commands,
        "reset-mfa",
        cmd_reset_mfa,
        help="remove a user's TOTP and recovery codes (lost phone); revokes their sessions",
    )
    reset_mfa.add_argument("username")
    add_reason_option(reset_mfa)

    unlock = command(
        commands,
        "unlock",
        cmd_unlock,
        help="end an account's lockout after failed logins (from every address)",
        description="End the lockouts failed logins put on an account, from every address, and forget its "
        "failed attempts; audited as lockout_cleared. `parley admin show USER` says whether it is locked out.",
    )
    unlock.add_argument("username")
    add_reason_option(unlock)

    lift = command(
        commands,
        "lift-slowdown",
        cmd_lift_slowdown,
        help="let a client address slowed down by the anomaly detector log in again",
        description="End the anomaly detector's slow-down of one client address (a password_spraying "
        "response) before its time is up; audited as source_slowdown_lifted. SOURCE is the address as the "
        "source_slowed audit record names it (ipv4:203.0.113.9, or just 203.0.113.9).",
    )
    lift.add_argument("source")
    add_reason_option(lift)

    show = command(commands, "show", cmd_show, help="an account's role, state and lockout")
    show.add_argument("username")

    invite = command(commands, "invite", cmd_invite, help="a single-use invitation (PARLEY_REGISTRATION=invite)")
    invite.add_argument("--role", choices=ROLES, default="member")
    invite.add_argument("--hours", type=int, default=72, help="valid for this many hours (1-720)")

    command(commands, "rotate-signing-key", cmd_rotate_signing_key, help="sign access tokens with a new Ed25519 key")
    retire = command(
        commands,
        "retire-signing-key",
        cmd_retire_signing_key,
        help="refuse every token signed by an old key now (a leaked key; rotation retires on its own)",
    )
    retire.add_argument("key_id")

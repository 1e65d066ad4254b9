"""`parley register`, `parley login` and `parley password`: an account's own commands."""

from __future__ import annotations

import argparse
import sys

from parley_cli.arguments import command
from parley_cli.prompt import ask_secret
from parley_cli.saved_login import save_login
from parley_cli.signin import (
    PASSWORDS_COME_FROM,
    SECOND_FACTOR_HOW,
    client_for,
    mfa_hint,
    read_password,
    read_secret,
    second_factor,
    signed_in,
    token_path,
    totp_or_recovery,
)
from parley_cli.terminal import shown
from parley_client import MfaRequired


async def cmd_register(args: argparse.Namespace) -> int:
    async with client_for(args) as client:
        response = await client.register(args.username, read_password(args), invite_code=args.invite)
    print(f"registered {shown(response.username)} ({response.user_id})")
    return 0


async def cmd_login(args: argparse.Namespace) -> int:
    async with client_for(args) as client:
        password = read_password(args)
        totp, recovery = totp_or_recovery(args.totp.strip())
        try:
            response = await client.login(args.username, password, totp_code=totp, recovery_code=recovery)
        except MfaRequired:
            if not (code := second_factor(args)):
                raise SystemExit(f"error: {mfa_hint(args.username)}") from None
            totp, recovery = totp_or_recovery(code)
            response = await client.login(args.username, password, totp_code=totp, recovery_code=recovery)
    save_login(token_path(args, args.username), response)
    print(f"logged in as {args.username}; the CLI renews the session's 15-minute token while the session lasts")
    return 0


def _new_password(username: str) -> str:
    """Typed twice at a terminal (a typo would lock the user out); the next line of piped stdin."""
    missing = "no new password given: type it at the prompt, or give it on the second line of standard input"
    password = read_secret(f"new password for {username}: ", missing=missing)
    if sys.stdin.isatty() and ask_secret("the new password again: ") != password:
        raise SystemExit("error: the two new passwords differ; the password is not changed")
    return password


async def cmd_password(args: argparse.Namespace) -> int:
    """Changes the --as user's own password. Not from $PARLEY_PASSWORD: a script's login password
    there would otherwise be taken for the current one and the first piped line for the new one."""
    async with signed_in(args) as client:
        missing = "no current password given: type it at the prompt, or give it on the first line of standard input"
        current = read_secret(f"current password for {args.user}: ", missing=missing)
        await client.change_password(current, _new_password(args.user))
    print(f"password of {args.user} changed; every other session of {args.user} is signed out, this one stays")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    register = command(
        sub,
        "register",
        cmd_register,
        help="create an account (open or invitation registration)",
        description=f"Create an account; the password is read from {PASSWORDS_COME_FROM}.",
    )
    register.add_argument("username")
    register.add_argument("--invite", default="", help="your invitation code (PARLEY_REGISTRATION=invite)")
    login = command(
        sub,
        "login",
        cmd_login,
        help="log in and keep the session (renewed as needed, up to 30 days)",
        description="Log in and keep the session's tokens in <data-dir>/cli/ (the CLI renews the 15-minute "
        "access token as needed, for up to 30 days); the password is read from "
        f"{PASSWORDS_COME_FROM}. An account with "
        f"two-factor authentication also needs {SECOND_FACTOR_HOW}: --totp CODE, or asked after the password "
        "(the next line of standard input, or $PARLEY_MFA_CODE).",
    )
    login.add_argument("username")
    login.add_argument(
        "--totp",
        default="",
        metavar="CODE",
        help="the code from your authenticator app, or a recovery code (xxxx-xxxx-xxxx-xxxx, each works once)",
    )
    command(
        sub,
        "password",
        cmd_password,
        help="change your password (with --as USER)",
        description="Change your own password, as `parley --as USER password`: asks for the current one, "
        "then the new one twice; from standard input, the current password on the first line and the new one "
        "on the second ($PARLEY_PASSWORD is not used here). Your other sessions are signed out.",
    )

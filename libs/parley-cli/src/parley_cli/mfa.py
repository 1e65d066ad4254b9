"""`parley mfa ...`: a user's own two-factor settings, through the gateway with their token."""

from __future__ import annotations

import argparse
import sys

from parley_cli.arguments import command, command_group
from parley_cli.prompt import ask
from parley_cli.signin import read_password, signed_in


def _password_for(user: str) -> str:
    return read_password(argparse.Namespace(username=user))


def _how_to_use_a_code(user: str) -> str:
    return (
        "each recovery code works once in place of the app's code: type it when `parley login` asks for "
        f"the code, or give it as `parley login {user} --totp CODE`"
    )


async def cmd_recovery_codes(args: argparse.Namespace) -> int:
    async with signed_in(args) as client:
        if args.totp:
            codes = await client.regenerate_recovery_codes(totp_code=args.totp)
        else:
            codes = await client.regenerate_recovery_codes(password=_password_for(args.user))
    print(_how_to_use_a_code(args.user))
    print("new recovery codes (every earlier code no longer works):")
    for code in codes:
        print(code)
    return 0


def _code_from_app() -> str:
    """The first code the authenticator app shows: a prompt, or the next line of piped stdin."""
    if not sys.stdin.isatty():
        print("code from your authenticator app: ", end="", flush=True)
        return sys.stdin.readline().strip()
    return ask("code from your authenticator app: ").strip()


async def cmd_enrol(args: argparse.Namespace) -> int:
    async with signed_in(args) as client:
        begun = await client.begin_totp_enrolment()
        print("add this account to your authenticator app (scan the URI as a QR code, or type the secret):")
        print(begun.otpauth_uri)
        print(f"secret: {begun.secret_base32}", flush=True)
        codes = await client.confirm_totp_enrolment(_code_from_app())
    print(f"two-factor authentication is on; `parley login {args.user}` now asks for a code from the app.")
    print(_how_to_use_a_code(args.user))
    print("recovery codes (keep them safe, they are not shown again):")
    for code in codes:
        print(code)
    return 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    commands = command_group(sub, "mfa", help="your two-factor authentication (with --as USER)")
    codes = command(
        commands,
        "recovery-codes",
        cmd_recovery_codes,
        help="replace your recovery codes; proves presence with --totp CODE or your password "
        "(prompt or $PARLEY_PASSWORD)",
    )
    codes.add_argument("--totp", default="", help="a current code from your authenticator app")
    command(
        commands,
        "enrol",
        cmd_enrol,
        help="turn on TOTP: shows the otpauth URI and secret, asks for a code, prints recovery codes once",
    )

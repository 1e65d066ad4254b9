"""How a command reaches the platform as someone: its client, the saved login it acts as, and
the secrets (password, second factor) it reads from the environment, standard input or a prompt.

Every command module takes these from here; `main` only builds the parser and dispatches.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from parley_cli.joined_host import joined_host
from parley_cli.prompt import ask, ask_secret
from parley_cli.saved_login import saved_logins, use_saved_login
from parley_cli.state import CLIENT_FILE, no_platform
from parley_cli.terminal import shown
from parley_client import ClientConfig, ParleyClient

# Where the CLI reads a password: said in every command's help that reads one.
PASSWORDS_COME_FROM = "a prompt, the first line of standard input, or $PARLEY_PASSWORD"
CA_CERT = Path("pki") / "ca.crt"  # the platform CA's certificate, in every data folder (a joined host's too)
MAX_TOTP_DIGITS = 8  # RFC 6238 codes have 6 to 8 digits; a recovery code is longer and has letters
SECOND_FACTOR_HOW = (
    "the code from your authenticator app, or one of your recovery codes (xxxx-xxxx-xxxx-xxxx, each works once)"
)


def read_secret(prompt: str, *, missing: str) -> str:
    """The next line of piped standard input, or a prompt that does not echo at a terminal. An
    empty one ends the command here, saying `missing`: the server would only call it too short."""
    secret = sys.stdin.readline().rstrip("\n") if not sys.stdin.isatty() else ask_secret(prompt)
    if not secret:
        raise SystemExit(f"error: {missing}")
    return secret


def read_password(args: argparse.Namespace) -> str:
    """From PARLEY_PASSWORD (scripts), piped stdin or a prompt."""
    if env := os.environ.get("PARLEY_PASSWORD"):
        return env
    missing = f"no password given for {args.username}: it is read from {PASSWORDS_COME_FROM}"
    return read_secret(f"password for {args.username}: ", missing=missing)


def second_factor(args: argparse.Namespace) -> str:
    """The TOTP code (digits) or a recovery code: from PARLEY_MFA_CODE, stdin or a prompt."""
    if env := os.environ.get("PARLEY_MFA_CODE"):
        return env.strip()
    if not sys.stdin.isatty():
        return sys.stdin.readline().strip()
    return ask(f"two-factor code for {args.username} (authenticator app, or a recovery code): ").strip()


def totp_or_recovery(code: str) -> tuple[str, str]:
    """(totp_code, recovery_code) for the SDK. An authenticator app shows 6 to 8 digits (some with
    a space in the middle); anything else is taken as a recovery code, which auth compares
    ignoring case and spaces."""
    digits = code.replace(" ", "")
    if digits.isascii() and digits.isdigit() and len(digits) <= MAX_TOTP_DIGITS:
        return digits, ""
    return "", code


def mfa_hint(username: str) -> str:
    return (
        f"{username} uses two-factor authentication: give {SECOND_FACTOR_HOW}, "
        f"as `parley login {username} --totp CODE`, at the prompt after the password, on the line of "
        "standard input after the password, or in $PARLEY_MFA_CODE"
    )


def client_for(args: argparse.Namespace) -> ParleyClient:
    """The gateway of client.json (written where a gateway runs), else a joined host's fleet
    gateway (the first host's); --gateway overrides either. The folder's CA is trusted."""
    data_dir: Path = args.data_dir
    if (data_dir / CLIENT_FILE).exists():
        config = ClientConfig.from_data_dir(data_dir)
    else:
        joined = joined_host(data_dir)
        gateway = args.gateway or (joined.gateway_address if joined else "")
        if not gateway or not (data_dir / CA_CERT).exists():
            raise no_platform(data_dir)  # says how to start it in that folder, or that the folder is not there
        config = ClientConfig(gateway_address=gateway, ca_cert=data_dir / CA_CERT)
    if args.gateway:
        config = ClientConfig(gateway_address=args.gateway, ca_cert=config.ca_cert)
    return ParleyClient.from_config(config)


@asynccontextmanager
async def signed_in(args: argparse.Namespace) -> AsyncIterator[ParleyClient]:
    """A client as the --as user, with their saved session; closed on leaving."""
    async with client_for(args) as client:
        await login_as(args, client)
        yield client


def token_path(args: argparse.Namespace, user: str) -> Path:
    data_dir: Path = args.data_dir
    return data_dir / "cli" / f"{user.casefold()}.json"


async def login_as(args: argparse.Namespace, client: ParleyClient) -> None:
    if not args.user:
        raised = "name the user with --as USER"
        if saved := saved_logins(token_path(args, "-").parent):
            raise SystemExit(f"{raised}; logged in here: {', '.join(map(shown, saved))}")
        raise SystemExit(f"{raised} (log in first with `parley login USER`)")
    path = token_path(args, args.user)
    if not path.exists():
        raise SystemExit(f"error: {args.user} is not logged in here; run `parley login {args.user}`")
    use_saved_login(client, path, args.user)

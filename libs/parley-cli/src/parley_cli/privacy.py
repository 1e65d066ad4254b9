"""`parley export`, `parley erase` and `parley retention`: a user's right to a copy of their data
and to its erasure, and how long a channel keeps its messages.

A user acts on their own data through the gateway (`parley --as alice export --out FILE`).
For anyone else it is the operator, straight to storage over mutual TLS with the platform
identity (`parley export alice --out FILE`): storage allows exactly these two (parley_storage.access).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC
from pathlib import Path

import grpc
from parley.auth.v1 import auth_pb2
from parley.messaging.v1 import messaging_pb2, messaging_pb2_grpc
from parley.storage.v1 import storage_pb2, storage_pb2_grpc

from parley_cli.admin import _account, _auth  # the operator's auth connection: one way to reach it
from parley_cli.arguments import add_reason_option, command
from parley_cli.prompt import ask
from parley_cli.signin import signed_in
from parley_cli.state import load_running_state
from parley_cli.terminal import shown
from parley_cli.wording import counted
from parley_client import ParleyError
from parley_core.contracts import MAX_RETENTION_DAYS
from parley_core.files import write_private_file
from parley_core.grpc_channel import secure_channel
from parley_core.topology import PLATFORM_USER
from parley_storage.key_files import KEYRING_FILE

TIMEOUT_S = 120.0  # both walk every archived event of the user
ID_LENGTH = 32  # user and channel ids: uuid4 in hex
KEYRING = Path("secrets") / KEYRING_FILE
KEYRING_CHANGED = (
    f"{KEYRING} changed (the erasure destroyed its earlier key generations): copy it to your key backup now "
    "and destroy the older copy there, which could still open the erased data in older backups"
)


@asynccontextmanager
async def _as_operator(args: argparse.Namespace, service: str) -> AsyncIterator[grpc.aio.Channel]:
    """The platform identity over mutual TLS, straight to `service`; its refusals as ParleyError."""
    from parley_core.pki import ensure_pki

    address = load_running_state(args.data_dir)["services"][service]["address"]
    pki = ensure_pki(args.data_dir / "pki", [PLATFORM_USER])
    channel = secure_channel(pki, identity=PLATFORM_USER, address=address, peer=service)
    try:
        yield channel
    except grpc.aio.AioRpcError as exc:
        raise ParleyError(exc.code(), exc.details() or exc.code().name) from None
    finally:
        await channel.close()


@asynccontextmanager
async def _archive(args: argparse.Namespace) -> AsyncIterator[storage_pb2_grpc.StorageArchiveServiceAsyncStub]:
    async with _as_operator(args, "storage") as channel:
        yield storage_pb2_grpc.StorageArchiveServiceStub(channel)


def looks_like_id(text: str) -> bool:
    """A user's or channel's id, as auth and messaging make them (not a username)."""
    return len(text) == ID_LENGTH and all(c in "0123456789abcdef" for c in text)


async def _user_id(args: argparse.Namespace, username: str) -> str:
    """The account's user id; a user id itself is taken as given, since an erased account is no
    longer found by its name (so an erasure that did not finish is called again by id)."""
    try:
        async with _auth(args) as stub:
            return str((await _account(stub, username)).user_id)
    except ParleyError as exc:
        if exc.code != grpc.StatusCode.NOT_FOUND:
            raise
        if looks_like_id(username) and await _archived_account(args, username):
            return username
        raise ParleyError(
            exc.code, f"{exc.message}; an account already erased is named by its user id (`parley erase USER_ID`)"
        ) from None


async def _archived_account(args: argparse.Namespace, user_id: str) -> bool:
    """Whether the archive holds an account with this id (an erased one included): a mistyped id
    must not pass for a finished erasure."""
    request = storage_pb2.GetAggregateEventsRequest(aggregate_type="user", aggregate_id=user_id, limit=1)
    async with _archive(args) as archive:
        return bool((await archive.GetAggregateEvents(request, timeout=TIMEOUT_S)).events)


def _finish_by_id(exc: ParleyError, user_id: str | None) -> ParleyError:
    """An erasure that destroyed the keys but did not finish deleting from the log: the account is
    gone, so the retry names it by id (storage also finishes it at its next start)."""
    if exc.code != grpc.StatusCode.UNAVAILABLE or not user_id:
        return exc
    return ParleyError(exc.code, f"{exc.message}; to finish now, the operator runs `parley erase {user_id} --yes`")


def _subject(args: argparse.Namespace) -> str:
    """Whose data: the USER argument (operator), else the --as user (their own). Both would leave
    one of them ignored: the operator would act on USER while the user meant their own data."""
    if not args.username and not args.user:
        raise SystemExit("name the user: `parley --as USER ...` for your own data, or USER as the operator")
    if args.username and args.user:
        raise SystemExit("name USER (as the operator) or use --as USER for your own data, not both")
    return str(args.username or args.user)


def _refuse_unwritable(out: Path) -> None:
    """Before the export (it may walk the whole archive): --out names a file in a folder that exists."""
    if out.is_dir():
        raise SystemExit(f"--out {out} is a folder: give a file name")
    if not out.parent.is_dir():
        raise SystemExit(f"--out {out}: there is no folder {out.parent} to write it in")


async def cmd_export(args: argparse.Namespace) -> int:
    out: Path = args.out
    who = _subject(args)
    _refuse_unwritable(out)
    if args.username:
        user_id = await _user_id(args, args.username)
        async with _archive(args) as archive:
            response = await archive.ExportUserData(
                storage_pb2.ExportUserDataRequest(user_id=user_id), timeout=TIMEOUT_S
            )
        data = response.archive
    else:
        async with signed_in(args) as client:
            data = await client.export_my_data()
    # Personal data: readable by the one who asked only.
    try:
        write_private_file(out, data)
    except OSError as exc:  # a folder we may not write in, a full disk: the error names a temporary file
        raise SystemExit(f"--out {out}: not written: {exc.strerror}") from None
    print(f"exported the data of {who} to {out} ({len(data)} bytes, JSON, mode 0600)")
    return 0


def _confirmed(args: argparse.Namespace, who: str) -> bool:
    if args.yes:
        return True
    if not sys.stdin.isatty():
        raise SystemExit("erasure cannot be undone: add --yes to confirm when not at a terminal")
    print(f"This erases every message and event of {who} for good (backups included); it cannot be undone.")
    return ask(f"type {who} to confirm: ").strip() == who


class _KeyringWatch:
    """Says so once an erasure or a KEK rotation returned (or failed, as it may after the change)
    when storage's keyring file changed meanwhile: the key backup's copy still holds the destroyed
    key generations, which would open erased data in older backups. With a KMS there is no file
    and nothing to say."""

    def __init__(self, data_dir: Path, reminder: str = KEYRING_CHANGED) -> None:
        self.keyring = data_dir / KEYRING
        self.reminder = reminder
        self.before = self._read()

    def _read(self) -> bytes | None:
        return self.keyring.read_bytes() if self.keyring.exists() else None

    def remind_if_changed(self) -> None:
        if self._read() not in (None, self.before):
            print(self.reminder, file=sys.stderr)


async def cmd_erase(args: argparse.Namespace) -> int:
    who = _subject(args)
    if args.username:  # the operator's: a folder that is no running platform's is said before confirming
        load_running_state(args.data_dir)
    if not _confirmed(args, who):
        print("not erased")
        return 1
    keyring = _KeyringWatch(args.data_dir)
    user_id: str | None = None
    try:
        if args.username:
            user_id = await _user_id(args, args.username)
            async with _auth(args) as stub:  # auth records the request: it acts on nothing else
                await stub.RequestErasure(
                    auth_pb2.AccountActionRequest(user_id=user_id, reason=args.reason), timeout=TIMEOUT_S
                )
            request = storage_pb2.EraseUserDataRequest(user_id=user_id, reason=args.reason)
            async with _archive(args) as archive:
                result = await archive.EraseUserData(request, timeout=TIMEOUT_S)
        else:
            async with signed_in(args) as client:
                user_id = client.user_id
                result = await client.erase_my_data(reason=args.reason)
    except ParleyError as exc:
        keyring.remind_if_changed()
        raise _finish_by_id(exc, user_id) from None
    except BaseException:
        keyring.remind_if_changed()
        raise
    print(
        f"erased the data of {who}: {counted(len(result.destroyed_key_ids), 'key')} destroyed, "
        f"{counted(result.events_unreadable, 'archived event')} unreadable, "
        f"{result.events_deleted_from_log} deleted from the log"
    )
    keyring.remind_if_changed()
    return 0


def operator_only(args: argparse.Namespace, what: str) -> None:
    """Refuse --as on what only the operator does: it would not act as that user, and the
    change would be recorded as the platform's."""
    if args.user:
        raise SystemExit(f"{what} is the operator's (this data folder's platform identity): run it without --as")


async def cmd_retention(args: argparse.Namespace) -> int:
    """The operator's policy for one channel: recorded by messaging, the channels' owner, which
    expires nothing no policy of its record covers (SetChannelRetention), then applied at once
    by storage (SetRetentionPolicy); without arguments, every channel's policy
    (ListRetentionPolicies)."""
    if not args.channel_id:
        return await _list_retention(args)
    operator_only(args, "setting a retention policy")
    if args.days is None:
        raise SystemExit("give DAYS after CHANNEL_ID (0 keeps the messages forever); `parley retention` lists them")
    if not 0 <= args.days <= MAX_RETENTION_DAYS:  # the request's field holds no more than 2**32 - 1
        raise SystemExit(
            f"DAYS is a number of days up to {MAX_RETENTION_DAYS}, 0 to keep the channel's messages forever"
        )
    policy = messaging_pb2.SetChannelRetentionRequest(channel_id=args.channel_id, days=args.days)
    async with _as_operator(args, "messaging") as channel:
        await messaging_pb2_grpc.MessagingServiceStub(channel).SetChannelRetention(policy, timeout=TIMEOUT_S)
    request = storage_pb2.SetRetentionPolicyRequest(channel_id=args.channel_id, days=args.days)
    async with _archive(args) as archive:
        result = await archive.SetRetentionPolicy(request, timeout=TIMEOUT_S)
    kept = "forever" if not args.days else f"{args.days} days"
    removed = counted(result.removed_now, "older message")
    print(f"channel {args.channel_id} keeps its messages {kept}; {removed} removed now")
    return 0


async def _as_logged_in_user(args: argparse.Namespace) -> list[tuple[str, str]]:
    """With --as USER, that user's saved login to present to storage (e.g. an auditor's);
    without, nothing: the platform identity acts as the operator."""
    if not args.user:
        return []
    async with signed_in(args) as client:
        return [("authorization", f"Bearer {await client.current_token()}")]


def retention_row(policy: storage_pb2.RetentionPolicy, width: int) -> str:
    set_at = policy.set_at.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M:%S")
    return f"{shown(policy.channel_id):<{width}}  {policy.days:>5}  {shown(policy.set_by):<10}  {set_at}"


async def _list_retention(args: argparse.Namespace) -> int:
    request = storage_pb2.ListRetentionPoliciesRequest()
    metadata = await _as_logged_in_user(args)  # the operator, or a security auditor with --as
    async with _archive(args) as archive:
        listed = await archive.ListRetentionPolicies(request, metadata=metadata, timeout=TIMEOUT_S)
    if not listed.policies:
        print("no channel has a retention policy: every channel keeps its messages forever")
        return 0
    width = max(len("channel"), *(len(p.channel_id) for p in listed.policies))
    print(f"{'channel':<{width}}  {'days':>5}  {'set by':<10}  set at (UTC)")
    for policy in listed.policies:
        print(retention_row(policy, width))
    print("other channels keep their messages forever")
    return 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    export = command(
        sub,
        "export",
        cmd_export,
        help="a copy of a user's data (yours with --as; anyone's as the operator, naming USER)",
    )
    export.add_argument("username", nargs="?", default="", metavar="USER", help="as the operator: whose data")
    export.add_argument("--out", type=Path, required=True, help="write the JSON document here (mode 0600)")
    erase = command(
        sub,
        "erase",
        cmd_erase,
        help="erase a user's data for good (yours with --as; anyone's as the operator, naming USER)",
    )
    erase.add_argument(
        "username",
        nargs="?",
        default="",
        metavar="USER",
        help="as the operator: whose data (a username, or the user id of an account already erased)",
    )
    add_reason_option(erase, help="kept in the audited erasure record")
    erase.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    retention = command(
        sub,
        "retention",
        cmd_retention,
        help="how long a channel keeps its messages; older ones are removed everywhere (operator)",
        description="With CHANNEL_ID and DAYS, set that channel's policy (recorded by messaging, which expires "
        "nothing else; applied by storage at once, then hourly); "
        "without arguments, list every channel's policy (the operator, or a security auditor with --as).",
    )
    retention.add_argument(
        "channel_id", nargs="?", default="", metavar="CHANNEL_ID", help="the channel's id (`parley channels` shows it)"
    )
    retention.add_argument(
        "days", nargs="?", type=int, metavar="DAYS", help="keep messages this many days; 0 keeps them forever"
    )

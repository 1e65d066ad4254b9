"""`parley backup` as an operator meets it, the tool run as a subprocess: a stopped or crashed
platform, a wrong folder, Ctrl-C, a refused restore; and storage refusing to run on a restored folder.

What each asserts is what the operator sees: the exit code, one line on stderr and no traceback,
and what the folders hold afterwards (nothing new after a refusal).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from parley.auth.v1.events_pb2 import TotpEnrolled, UserRegistered

from parley_core.bus import EventBus
from parley_core.envelope import NewEvent
from parley_core.files import ensure_private_dir
from parley_core.net import free_port
from parley_core.pki import Pki
from parley_core.runner import RefusedToStart
from parley_core.topology import CONSUMERS, PLATFORM_USER, STREAMS, channel_subject, user_subject
from parley_storage.archive import SqlEventArchive, open_engine
from parley_storage.backup import BackupKeys, create_backup
from parley_storage.datakeys import DataKeys
from parley_storage.kek import FileKeyring
from parley_storage.key_files import BACKUP_KEY_FILE, KEYRING_FILE, VERIFY_KEY_FILE
from parley_storage.migrate import upgrade_to_head
from parley_storage.restored import mark_restored, read_restored
from parley_storage.service import refuse_a_lost_backup_key
from parley_testing.events import received
from parley_testing.nats import NatsTestServer
from parley_testing.waiting import until

EX_CONFIG = 78
EX_INTERRUPTED = 130
TOOL = "parley_storage.backup_tool"
RESTORE_SECRETS = (KEYRING_FILE, BACKUP_KEY_FILE, VERIFY_KEY_FILE)
# Bounds a tool that would hang (the bug this file guards against) instead of measuring it.
HANG_GUARD_S = 120


def run_module(
    module: str, *args: str, data_dir: Path | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PARLEY_DATA_DIR", "PARLEY_DATABASE_URL")}
    if data_dir is not None:
        env["PARLEY_DATA_DIR"] = str(data_dir)
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=HANG_GUARD_S,
        check=False,
    )


def refusal(result: subprocess.CompletedProcess[str]) -> str:
    """The one line a refused command prints; it must print nothing else."""
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def listing(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


async def data_folder(root: Path, *, mfa: bool = False, backup_keys: bool = True) -> Path:
    """A data folder as a platform leaves it: an archive holding an account, its keyring, and
    (unless told otherwise) the backup keys storage makes at its first start."""
    data_dir = root / "data"
    ensure_private_dir(data_dir / "storage")
    engine = open_engine(f"sqlite:///{data_dir / 'storage' / 'archive.db'}")
    try:
        upgrade_to_head(engine)
        keyring = FileKeyring.load_or_create(ensure_private_dir(data_dir / "secrets") / KEYRING_FILE)
        archive = SqlEventArchive(engine, DataKeys(keyring))
        alice = [
            UserRegistered(user_id="u-alice", username="alice"),
            *([TotpEnrolled(user_id="u-alice")] if mfa else []),
        ]
        await archive.archive(
            "storage-archive-auth",
            [
                received(
                    NewEvent(aggregate_type="user", aggregate_id="u-alice", payload=payload, actor="u-alice"),
                    stream="AUTH",
                    stream_seq=seq,
                    subject=user_subject("u-alice"),
                )
                for seq, payload in enumerate(alice, start=1)
            ],
        )
    finally:
        engine.dispose()
    if backup_keys:
        BackupKeys.create_missing(data_dir / "secrets")
    return data_dir


def write_state(
    data_dir: Path, *, running: bool, nats_url: str, pid: int, ca_cert: Path, passwords: dict[str, str] | None = None
) -> None:
    """What `parley up` leaves: platform.json, the NATS passwords and the CA it trusts."""
    state = {"running": running, "pid": pid, "nats_url": nats_url, "nats_pids": [], "services": {}}
    (data_dir / "platform.json").write_text(json.dumps(state))
    (data_dir / "secrets" / "nats-passwords.json").write_text(json.dumps(passwords or {PLATFORM_USER: "secret"}))
    ensure_private_dir(data_dir / "pki")
    shutil.copy2(ca_cert, data_dir / "pki" / "ca.crt")


def a_pid_that_is_gone() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(timeout=HANG_GUARD_S)
    return child.pid


def nobody_listens() -> str:
    return f"tls://127.0.0.1:{free_port()}"


def created(result: subprocess.CompletedProcess[str], backup: Path) -> dict[str, object]:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "NATS error" not in result.stderr
    manifest: dict[str, object] = json.loads(result.stdout)
    assert manifest["created"] == str(backup)
    assert (backup / "manifest.json").exists()
    return manifest


async def test_a_stopped_platform_is_backed_up_at_once(pki: Pki, tmp_path: Path) -> None:
    """After a clean stop platform.json says "running": false; its NATS URL names nobody."""
    data_dir = await data_folder(tmp_path)
    write_state(data_dir, running=False, nats_url=nobody_listens(), pid=a_pid_that_is_gone(), ca_cert=pki.ca_cert)
    backup = tmp_path / "backup"

    result = run_module(TOOL, "create", str(backup), "--data-dir", str(data_dir))

    manifest = created(result, backup)
    assert manifest["stream_point"] is None  # the archive is all there is
    assert manifest["event_counts"] == {"AUTH": 1}
    assert "the platform is stopped" in result.stderr
    verified = run_module(TOOL, "verify", str(backup), "--data-dir", str(data_dir))
    assert verified.returncode == 0, verified.stderr


async def test_a_crashed_platform_is_backed_up_after_a_bounded_connect(pki: Pki, tmp_path: Path) -> None:
    """A crash leaves "running": true naming a NATS that is gone; its `parley up` is gone too."""
    data_dir = await data_folder(tmp_path)
    write_state(data_dir, running=True, nats_url=nobody_listens(), pid=a_pid_that_is_gone(), ca_cert=pki.ca_cert)
    backup = tmp_path / "backup"

    result = run_module(TOOL, "create", str(backup), "--data-dir", str(data_dir))

    assert created(result, backup)["stream_point"] is None
    assert "platform.json is stale" in result.stderr
    assert "no NATS server answered" in result.stderr


async def test_a_running_platform_whose_nats_does_not_answer_is_refused(pki: Pki, tmp_path: Path) -> None:
    """Its `parley up` lives: a backup without the point could miss acknowledged events."""
    data_dir = await data_folder(tmp_path)
    write_state(data_dir, running=True, nats_url=nobody_listens(), pid=os.getpid(), ca_cert=pki.ca_cert)
    backup = tmp_path / "backup"

    line = refusal(run_module(TOOL, "create", str(backup), "--data-dir", str(data_dir)))

    assert line.startswith(f"backup create failed: the platform runs (`parley up`, pid {os.getpid()})")
    assert "no NATS server answered on tls://127.0.0.1:" in line
    assert not backup.exists()


@pytest.mark.parametrize("to_the_group", [True, False], ids=["ctrl-c-at-a-terminal", "kill-int-of-parley-only"])
async def test_ctrl_c_while_the_backup_waits_for_the_archive(
    nats_server: NatsTestServer, tmp_path: Path, to_the_group: bool
) -> None:
    """`parley backup create` of a running platform reads the point from JetStream, waits for the
    archive to hold it, and Ctrl-C there (to the CLI and the tool, as a terminal sends it, or to
    `parley` alone, as `kill -INT` or `timeout -s INT` does) says one line, exits 130, and leaves
    no backup folder."""
    data_dir = await data_folder(tmp_path)
    write_state(
        data_dir,
        running=True,
        nats_url=nats_server.url,
        pid=os.getpid(),
        ca_cert=nats_server.ca_cert,
        passwords=nats_server.passwords,
    )
    await EventBus(await nats_server.connect(PLATFORM_USER), service=PLATFORM_USER, producer="test").ensure_streams(
        STREAMS
    )

    caught_up = tmp_path / "caught-up"
    manifest = created(run_module(TOOL, "create", str(caught_up), "--data-dir", str(data_dir)), caught_up)
    nothing = {"first_seq": 0, "last_seq": 0, "messages": 0}
    assert manifest["stream_point"] == {spec.stream: nothing for spec in CONSUMERS if spec.service == "storage"}

    messaging = (await nats_server.connect("messaging")).jetstream()
    await messaging.publish(channel_subject("general"), b"an event the archive does not hold")
    backup = tmp_path / "backup"
    stdout, stderr = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with stdout.open("w") as out, stderr.open("w") as err:
        cli = subprocess.Popen(
            [sys.executable, "-m", "parley_cli", "--data-dir", str(data_dir), "backup", "create", str(backup)],
            stdout=out,
            stderr=err,
            start_new_session=True,  # its own process group, as a terminal's foreground job
        )
        try:
            await until(lambda: "waiting up to" in stderr.read_text(), "the backup to wait for the archive", 60)
            if to_the_group:
                os.killpg(cli.pid, signal.SIGINT)
            else:
                os.kill(cli.pid, signal.SIGINT)
            cli.wait(timeout=HANG_GUARD_S)
        finally:
            if cli.poll() is None:
                os.killpg(cli.pid, signal.SIGKILL)
                cli.wait()

    # When the CLI returns (the shell's prompt), the tool has cleaned up and said so.
    said = stderr.read_text()
    assert cli.returncode == EX_INTERRUPTED, said
    assert "Traceback" not in said
    assert said.splitlines()[-1] == "backup create interrupted; nothing was created"
    assert [line for line in said.splitlines() if not line.startswith("note: ")] == [said.splitlines()[-1]]
    assert stdout.read_text() == ""
    assert not backup.exists()


async def test_a_wrong_data_folder_is_refused_before_anything_is_made(tmp_path: Path) -> None:
    made_up, backup = tmp_path / "no-such-folder", tmp_path / "backup"

    line = refusal(run_module(TOOL, "create", str(backup), "--data-dir", str(made_up)))

    assert line == (
        f"backup create failed: no archive in {made_up} (storage/archive.db): is this the platform's data folder?"
        " (--data-dir)"
    )
    assert not made_up.exists()
    assert not backup.exists()

    # Run from another folder without --data-dir: the same, for ./.parley.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    line = refusal(run_module(TOOL, "create", str(backup), cwd=elsewhere))
    assert "no archive in .parley (storage/archive.db)" in line
    assert listing(elsewhere) == []

    # The empty archive.db an earlier version left in such a folder is no archive either.
    ensure_private_dir(made_up / "storage")
    (made_up / "storage" / "archive.db").touch()
    BackupKeys.create_missing(made_up / "secrets")
    line = refusal(run_module(TOOL, "create", str(backup), "--data-dir", str(made_up)))
    assert line.startswith(f"backup create failed: no archive in {made_up} (storage/archive.db) (no Parley schema")
    assert not backup.exists()


async def test_a_database_without_parleys_schema_is_refused(empty_postgres: str, tmp_path: Path) -> None:
    data_dir = await data_folder(tmp_path, backup_keys=False)
    backup = tmp_path / "backup"

    line = refusal(
        run_module(TOOL, "create", str(backup), "--data-dir", str(data_dir), "--database-url", empty_postgres)
    )

    assert line.startswith("backup create failed: no archive in postgresql+psycopg://postgres@127.0.0.1:5432/test")
    assert line.endswith(
        "(no Parley schema in it): is this the platform's database? (--database-url, PARLEY_DATABASE_URL)"
    )
    assert not backup.exists()
    assert not (data_dir / "secrets" / BACKUP_KEY_FILE).exists()


async def test_verify_and_restore_of_a_missing_or_wrong_folder_say_so_in_one_line(tmp_path: Path) -> None:
    data_dir = await data_folder(tmp_path, backup_keys=False)
    nowhere = tmp_path / "no-backup"

    line = refusal(run_module(TOOL, "verify", str(nowhere), "--data-dir", str(data_dir)))
    assert line.startswith("backup verify failed: backup key missing: ")  # this folder never made one

    BackupKeys.create_missing(data_dir / "secrets")
    line = refusal(run_module(TOOL, "verify", str(nowhere), "--data-dir", str(data_dir)))
    assert line == f"backup verify failed: not a backup: {nowhere / 'manifest.json'} is missing"
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    line = refusal(run_module(TOOL, "verify", str(a_file), "--data-dir", str(data_dir)))
    assert line == f"backup verify failed: {a_file} is not a backup folder"

    line = refusal(run_module(TOOL, "restore", str(nowhere), "--data-dir", str(tmp_path / "made-up")))
    assert "lacks storage-kek.json, storage-backup.key, storage-backup-signing.pub, auth-mfa-key.bin" in line
    assert not (tmp_path / "made-up").exists()


def backup_of(source: Path, backup: Path, *, registry: Path | None = None) -> None:
    """What `parley backup create` makes of the data folder ``source``."""
    engine = open_engine(f"sqlite:///{source / 'storage' / 'archive.db'}")
    try:
        create_backup(engine, BackupKeys.load_or_create(source / "secrets"), backup, registry=registry)
    finally:
        engine.dispose()


def key_backup_in(folder: Path, source: Path) -> Path:
    """An empty data folder holding the secrets a restore needs, copied from ``source``."""
    ensure_private_dir(folder / "secrets")
    for name in RESTORE_SECRETS:
        shutil.copy2(source / "secrets" / name, folder / "secrets" / name)
    return folder


async def test_a_backup_missing_a_file_its_manifest_lists_says_so(tmp_path: Path) -> None:
    source = await data_folder(tmp_path)
    registry = ensure_private_dir(tmp_path / "registry")
    (registry / "release.json").write_text("{}")
    backup = tmp_path / "backup"
    backup_of(source, backup, registry=registry)
    (backup / "registry.tar.enc").unlink()  # a copy that stopped short

    line = refusal(run_module(TOOL, "verify", str(backup), "--data-dir", str(source)))

    assert line == (
        f"backup verify failed: registry.tar.enc is missing from {backup} (its manifest lists it): "
        "is the copy complete?"
    )


async def test_a_damaged_key_backup_is_named_in_one_line(tmp_path: Path) -> None:
    """A keyring or backup key that is not one (a bad copy, another file in its place) is named,
    with what to do, by every action that reads it; a restore refused so leaves the folder as it was."""
    source = await data_folder(tmp_path / "original")
    backup = tmp_path / "backup"
    backup_of(source, backup)
    fresh = key_backup_in(tmp_path / "fresh", source)
    keyring = fresh / "secrets" / KEYRING_FILE
    keyring.write_text("not JSON {")
    before = listing(fresh)

    line = refusal(run_module(TOOL, "restore", str(backup), "--data-dir", str(fresh)))

    assert line == f"backup restore failed: {keyring} is not a readable keyring: copy it again from your key backup"
    assert listing(fresh) == before
    keyring.write_text('{"current": "kek-1", "keys": {"kek-1": "c2hvcnQ="}}')  # JSON, but a key too short
    assert "is not a readable keyring" in refusal(run_module(TOOL, "restore", str(backup), "--data-dir", str(fresh)))

    shutil.copy2(source / "secrets" / KEYRING_FILE, keyring)
    for folder in (source, fresh):
        (folder / "secrets" / BACKUP_KEY_FILE).write_text("not base64 !")
    damaged = f"{BACKUP_KEY_FILE} is not a readable backup key: copy it again from your key backup"
    for action, data_dir, target in (
        ("create", source, tmp_path / "another-backup"),
        ("verify", source, backup),
        ("restore", fresh, backup),
    ):
        line = refusal(run_module(TOOL, action, str(target), "--data-dir", str(data_dir)))
        assert line == f"backup {action} failed: {data_dir / 'secrets' / damaged}"
    assert not (tmp_path / "another-backup").exists()
    assert listing(fresh) == before


def test_restore_names_exactly_the_secrets_it_needs(tmp_path: Path) -> None:
    data_dir = tmp_path / "empty"
    (data_dir / "secrets").mkdir(parents=True)
    (data_dir / "secrets" / "storage-kek.json").write_text("{}")

    backup = str(tmp_path / "backup")
    result = run_module(TOOL, "restore", backup, "--data-dir", str(data_dir), data_dir=data_dir)

    assert result.returncode == 1
    # Every file a restore of accounts needs, auth's too: no second refusal after the copy.
    assert "lacks storage-backup.key, storage-backup-signing.pub, auth-mfa-key.bin:" in result.stderr
    copy = "copy storage-kek.json, storage-backup.key, storage-backup-signing.pub, auth-mfa-key.bin from your key"
    assert copy in result.stderr
    assert not (data_dir / "storage" / "archive.db").exists()


@pytest.mark.parametrize("lost", ["storage-backup.key", "storage-backup-signing.pem"])
async def test_a_lost_backup_key_is_refused_not_made_again(tmp_path: Path, lost: str) -> None:
    """A key made anew would leave the key backup unable to open (or verify) what is taken now."""
    data_dir = await data_folder(tmp_path)
    kept = {p.name: p.read_bytes() for p in (data_dir / "secrets").iterdir() if p.name != lost}
    (data_dir / "secrets" / lost).unlink()

    line = refusal(run_module(TOOL, "create", str(tmp_path / "backup"), "--data-dir", str(data_dir)))

    assert line.startswith(f"backup create failed: backup {'signing ' if 'signing' in lost else ''}key missing")
    assert lost in line
    assert "copy it from your key backup" in line
    assert not (tmp_path / "backup").exists()
    assert {p.name: p.read_bytes() for p in (data_dir / "secrets").iterdir()} == kept  # nothing made or replaced


def test_storage_refuses_to_start_without_the_backup_key_of_an_archive_it_already_holds(tmp_path: Path) -> None:
    secrets = ensure_private_dir(tmp_path / "secrets")
    refuse_a_lost_backup_key(secrets, archive_is_new=True)  # the first start makes it
    with pytest.raises(RefusedToStart, match=r"storage-backup\.key is missing, yet this archive is not new"):
        refuse_a_lost_backup_key(secrets, archive_is_new=False)
    BackupKeys.create_missing(secrets)
    refuse_a_lost_backup_key(secrets, archive_is_new=False)


async def test_a_refused_restore_leaves_the_folder_as_it_found_it(tmp_path: Path) -> None:
    source = await data_folder(tmp_path / "original", mfa=True)
    keys = BackupKeys.load_or_create(source / "secrets")
    engine = open_engine(f"sqlite:///{source / 'storage' / 'archive.db'}")
    try:
        create_backup(engine, keys, tmp_path / "backup")
    finally:
        engine.dispose()
    fresh = tmp_path / "fresh"
    ensure_private_dir(fresh / "secrets")
    for name in RESTORE_SECRETS:  # from the key backup, without auth's MFA key
        shutil.copy2(source / "secrets" / name, fresh / "secrets" / name)
    before = listing(fresh)

    line = refusal(run_module(TOOL, "restore", str(tmp_path / "backup"), "--data-dir", str(fresh)))
    assert "auth-mfa-key.bin" in line
    assert listing(fresh) == before  # no storage/, no keyring lock

    line = refusal(run_module(TOOL, "restore", str(tmp_path / "no-backup"), "--data-dir", str(fresh)))
    assert "not a backup" in line
    assert listing(fresh) == before

    # The corrected retry runs; what the same installation may leave in the folder does not stand in its way.
    (fresh / "secrets" / "auth-mfa-key.bin").write_bytes((source / "secrets" / KEYRING_FILE).read_bytes()[:32])
    for harmless in ("pki", "logs", "cli/keys", "storage"):
        ensure_private_dir(fresh / harmless)
    (fresh / "logs" / "storage.log").write_text("{}\n")
    result = run_module(TOOL, "restore", str(tmp_path / "backup"), "--data-dir", str(fresh))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["event_counts"] == {"AUTH": 2}
    marker = read_restored(fresh)
    assert marker is not None
    assert marker.events == 2  # what re-seeding checks the archive against (a restore cut short holds fewer)


def test_restore_refuses_a_folder_a_platform_ran_in(tmp_path: Path) -> None:
    fresh = tmp_path / "fresh"
    ensure_private_dir(fresh / "secrets")
    for name in RESTORE_SECRETS:
        (fresh / "secrets" / name).write_text("from the key backup")
    (fresh / "client.json").write_text('{"gateway_address": "127.0.0.1:1"}')  # another platform's gateway
    ensure_private_dir(fresh / "agent" / "tuf")
    (fresh / "agent" / "tuf" / "timestamp.json").write_text("{}")
    before = listing(fresh)

    line = refusal(run_module(TOOL, "restore", str(tmp_path / "backup"), "--data-dir", str(fresh)))

    assert line.startswith(
        f"backup restore failed: {fresh} holds agent/, client.json: restore into an empty data folder"
    )
    assert listing(fresh) == before


def test_storage_refuses_to_start_on_a_restored_folder(tmp_path: Path) -> None:
    data_dir = tmp_path / "restored"
    mark_restored(data_dir, "b1")

    result = run_module("parley_storage", data_dir=data_dir)

    assert result.returncode == EX_CONFIG
    [refusal] = result.stderr.splitlines()  # one line, the service log's JSON record
    assert json.loads(refusal)["level"] == "error"
    assert "refusing to start" in result.stderr
    assert "event log is not re-seeded yet" in result.stderr
    assert "up`" in result.stderr  # says what to run
    assert "Traceback" not in result.stderr

"""`parley up` from the command line: its options checked, one platform per data folder
(parley_cli.uplock), none started over processes an earlier run left behind, Ctrl-C stops it."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

from parley_cli.platform import MAX_INSTANCES, SCALABLE, START_ORDER, Platform
from parley_cli.state import leftover_pids
from parley_cli.uplock import PlatformAlreadyRunning, UpLock
from parley_core.database import DatabaseChoiceRefused, UnsupportedDatabase, check_database_url, choose_database
from parley_core.files import ensure_private_dir


def parse_instances(spec: str) -> dict[str, int]:
    """`messaging=2,gateway=2` as {service: count}; ValueError with what to write instead."""
    counts: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, equals, number = part.partition("=")
        name = name.strip()
        if not equals or not number.strip().isdigit():
            raise ValueError(f"{part!r} is not SERVICE=N (for example messaging=2,gateway=2)")
        if name not in SCALABLE:
            if name in START_ORDER:
                raise ValueError(f"{name} runs once per platform; several instances: {', '.join(SCALABLE)}")
            raise ValueError(f"no service {name!r}; several instances: {', '.join(SCALABLE)}")
        if name in counts:
            raise ValueError(f"{name} is given twice")
        count = int(number)
        if not 1 <= count <= MAX_INSTANCES:
            raise ValueError(f"{name}={count}: from 1 to {MAX_INSTANCES} instances on one host")
        counts[name] = count
    return counts


async def run_platform(
    data_dir: Path,
    *,
    gateway_port: int | None,
    web_port: int | None = None,
    nats_cluster: int = 1,
    database_url: str = "",
    instances: str = "",
) -> int:
    try:
        counts = parse_instances(instances)
    except ValueError as exc:
        print(f"[parley] --instances: {exc}", file=sys.stderr)
        return 2
    try:
        platform = Platform(
            data_dir, gateway_port=gateway_port, web_port=web_port, nats_cluster=nats_cluster, instances=counts
        )
    except ValueError as exc:
        print(f"[parley] --nats-cluster {nats_cluster}: {exc}", file=sys.stderr)
        return 2
    if database_url:
        try:
            check_database_url(database_url)
        except UnsupportedDatabase as exc:
            print(f"[parley] --database-url: {exc}", file=sys.stderr)
            return 2
    ensure_private_dir(platform.data_dir)
    lock = UpLock(platform.data_dir)
    try:
        lock.acquire()
    except PlatformAlreadyRunning as exc:
        print(f"[parley] refusing to start: {exc}", file=sys.stderr)
        return 1
    leftovers = leftover_pids(platform.data_dir)
    if leftovers:
        lock.release()
        print(
            f"[parley] refusing to start: an earlier `parley up` on {platform.data_dir} exited without "
            f"stopping its processes; pids {' '.join(map(str, leftovers))} still run (kill -TERM them first)",
            file=sys.stderr,
        )
        return 1
    try:
        platform.database_url = choose_database(platform.data_dir, database_url)
    except DatabaseChoiceRefused as exc:
        lock.release()
        print(f"[parley] refusing to start: {exc}", file=sys.stderr)
        return 1
    try:
        return await _run_locked(platform)
    finally:
        # Released only after stop(): every process this platform started has exited.
        lock.release()


async def _run_locked(platform: Platform) -> int:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, platform.request_stop)
    try:
        await platform.start()
        await platform.supervise()
    except (RuntimeError, TimeoutError, FileNotFoundError) as exc:
        platform.say(f"start failed: {exc}")
        await platform.stop()
        return 1
    platform.say("stopping")
    await platform.stop()
    platform.say("stopped; data kept in " + str(platform.data_dir))
    return 0

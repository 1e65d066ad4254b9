"""One benchmark run: baselines first, then the platform under each load, then the report."""

from __future__ import annotations

import asyncio
import json
import math
import os
import platform as host
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from parley_bench import baselines
from parley_bench.compare import compare_settings
from parley_bench.history import history_goals, measure_history
from parley_bench.instances import measure_two_instances
from parley_bench.live_streams import measure_live_streams
from parley_bench.platform_proc import BenchPlatform
from parley_bench.scenarios import (
    PASSWORD,
    Bench,
    Deliveries,
    Member,
    archive_lag_probe,
    closed_loop_sends,
    open_loop,
    wait_for_count,
)
from parley_bench.stats import percentile, ratio
from parley_bench.write_path import measure_write_path, write_path_goals
from parley_client import ParleyClient

FANOUT_MEMBERS = 50
PROBE_RATE = 20.0
DRAIN_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Plan:
    """How long and how wide each phase runs; `--quick` only checks that the harness works."""

    seconds: float
    echo_concurrency: int
    js_messages: int
    writers: int
    fanout_senders: int
    login_concurrency: int
    live_streams: int
    sequential_sends: int

    @classmethod
    def of(cls, *, quick: bool) -> Plan:
        return cls(
            seconds=3.0 if quick else 15.0,
            echo_concurrency=32 if quick else 64,
            js_messages=5_000 if quick else 50_000,
            writers=8 if quick else 32,
            fanout_senders=4 if quick else 8,
            login_concurrency=8 if quick else 16,
            live_streams=1_000 if quick else 10_000,
            sequential_sends=50 if quick else 300,
        )


def ms(seconds: float) -> float:
    return round(seconds * 1000.0, 2) if not math.isnan(seconds) else math.nan


async def measure_baselines(plan: Plan, workdir: Path, *, argon2: bool = True) -> dict[str, float]:
    cpus = baselines.cpu_count()
    # How busy the machine was as the run began (1-minute load average): whether a run was quiet.
    load_before = round(os.getloadavg()[0], 2)
    echo = await baselines.echo_qps(workdir / "echo", concurrency=plan.echo_concurrency, seconds=plan.seconds)
    js = await baselines.jetstream_throughput(workdir / "jetstream", messages=plan.js_messages)
    if not argon2:
        return {
            "cpus": cpus,
            "load_average_before": load_before,
            "grpc_echo_qps": round(echo, 1),
            "jetstream_publish_consume_per_s": round(js, 1),
        }
    argon_one = await asyncio.to_thread(baselines.argon2_hashes_per_second, threads=1, seconds=plan.seconds)
    argon_all = await asyncio.to_thread(baselines.argon2_hashes_per_second, threads=cpus, seconds=plan.seconds)
    return {
        "cpus": cpus,
        "load_average_before": load_before,
        "grpc_echo_qps": round(echo, 1),
        "jetstream_publish_consume_per_s": round(js, 1),
        "argon2id_hashes_per_s_1_thread": round(argon_one, 2),
        "argon2id_hashes_per_s_all_cpus": round(argon_all, 2),
    }


async def measure_sends(bench: Bench, plan: Plan, profile_dir: Path | None, platform: BenchPlatform) -> dict[str, Any]:
    writers = await bench.new_members("writer", plan.writers)
    channels = [(await w.client.create_channel(f"bench-{i}")).channel_id for i, w in enumerate(writers)]
    pairs = list(zip(writers, channels, strict=True))
    deliveries = Deliveries()
    for writer, channel_id in pairs:
        await bench.listen(writer, [channel_id], deliveries)
    prober = await bench.new_member("prober")
    probe_channel = (await prober.client.create_channel("probe")).channel_id

    profilers = start_profilers(platform, profile_dir, plan.seconds) if profile_dir else []
    lags: list[float] = []
    stop_probe = asyncio.Event()
    probe = asyncio.create_task(archive_lag_probe(prober, probe_channel, stop_probe, lags))
    max_run = await closed_loop_sends(pairs, seconds=plan.seconds)
    stop_probe.set()
    await probe
    for profiler in profilers:
        profiler.wait(timeout=120)
    await wait_for_count(lambda: deliveries.count, max_run.acknowledged, timeout=DRAIN_TIMEOUT_S)

    rate = max(1.0, 0.5 * max_run.per_second)
    deliveries.reset()

    async def send_one(i: int) -> None:
        writer, channel_id = pairs[i % len(pairs)]
        body = f"lat {i} {time.perf_counter_ns()}"
        deliveries.sent_at[body] = time.perf_counter()
        await writer.client.send(channel_id, body)

    ok, failed, _ = await open_loop(send_one, rate=rate, seconds=plan.seconds)
    complete = await wait_for_count(lambda: len(deliveries.latencies_s), ok, timeout=DRAIN_TIMEOUT_S)
    return {
        "writers": plan.writers,
        "acknowledged_sends_per_s": round(max_run.per_second, 1),
        "sends_acknowledged": max_run.acknowledged,
        "sends_failed": max_run.failed,
        "send_call_p50_ms": ms(percentile(max_run.latencies_s, 0.5)),
        "send_call_p99_ms": ms(percentile(max_run.latencies_s, 0.99)),
        "archive_lag_samples": len(lags),
        "archive_lag_p50_ms": ms(percentile(lags, 0.5)),
        "archive_lag_max_ms": ms(max(lags) if lags else math.nan),
        "half_load_rate_per_s": round(rate, 1),
        "half_load_sends_acknowledged": ok,
        "half_load_sends_failed": failed,
        "half_load_all_delivered": complete,
        "send_to_deliver_p50_ms": ms(percentile(deliveries.latencies_s, 0.5)),
        "send_to_deliver_p99_ms": ms(percentile(deliveries.latencies_s, 0.99)),
        "_pairs": pairs,
    }


async def fanout_rate(
    bench: Bench, members: list[Member], channel_id: str, *, senders: int, seconds: float
) -> dict[str, float]:
    """Deliveries per second to every live stream of one channel while it is sent to flat out."""
    deliveries = Deliveries()
    for member in members:
        await bench.listen(member, [channel_id], deliveries)
    started = time.perf_counter()
    run = await closed_loop_sends([(members[0], channel_id)] * senders, seconds=seconds)
    expected = run.acknowledged * len(members)
    complete = await wait_for_count(lambda: deliveries.count, expected, timeout=DRAIN_TIMEOUT_S)
    elapsed = max(deliveries.last_arrival, time.perf_counter() if not complete else 0.0) - started
    for member in members:
        if member.stream is not None:
            member.stream.cancel()
    return {
        "members": len(members),
        "sends_acknowledged": run.acknowledged,
        "deliveries": deliveries.count,
        "deliveries_expected": expected,
        "deliveries_per_s": round(deliveries.count / elapsed, 1) if elapsed > 0 else math.nan,
    }


async def measure_fanout(bench: Bench, plan: Plan) -> dict[str, Any]:
    owner, *others = await bench.new_members("fan", FANOUT_MEMBERS)
    channel_id = (await owner.client.create_channel("fanout")).channel_id
    for member in others:
        await member.client.join_channel(channel_id)
    wide = await fanout_rate(bench, [owner, *others], channel_id, senders=plan.fanout_senders, seconds=plan.seconds)
    solo = await bench.new_member("solo")
    solo_channel = (await solo.client.create_channel("solo")).channel_id
    narrow = await fanout_rate(bench, [solo], solo_channel, senders=plan.fanout_senders, seconds=plan.seconds)
    return {"members_50": wide, "members_1": narrow, "_usernames": [m.username for m in (owner, *others)]}


async def measure_logins(
    bench: Bench, plan: Plan, usernames: list[str], probe_pair: tuple[Member, str]
) -> dict[str, Any]:
    """Logins per second flat out, and what a login storm does to other calls' p99."""
    prober, channel_id = probe_pair

    async def other_call(i: int) -> None:
        if i % 2:
            await prober.client.history(channel_id, limit=20)
        else:
            await prober.client.send(channel_id, f"storm-probe {i}")

    _, idle_failed, idle = await open_loop(other_call, rate=PROBE_RATE, seconds=plan.seconds)

    clients = [bench.connect() for _ in range(plan.login_concurrency)]
    logins = failed = 0
    deadline = time.perf_counter() + plan.seconds

    async def storm(client: ParleyClient, offset: int) -> None:
        nonlocal logins, failed
        i = offset
        while time.perf_counter() < deadline:
            try:
                await client.login(usernames[i % len(usernames)], PASSWORD)
                logins += 1
            except Exception:
                failed += 1
            i += plan.login_concurrency

    started = time.perf_counter()
    storm_tasks = asyncio.gather(*(storm(c, n) for n, c in enumerate(clients)))
    _, storm_failed, during = await open_loop(other_call, rate=PROBE_RATE, seconds=plan.seconds)
    await storm_tasks
    elapsed = time.perf_counter() - started
    for client in clients:
        await client.close()
    return {
        "login_concurrency": plan.login_concurrency,
        "logins_per_s": round(logins / elapsed, 2),
        "logins_failed": failed,
        "other_calls_idle_p99_ms": ms(percentile(idle, 0.99)),
        "other_calls_storm_p99_ms": ms(percentile(during, 0.99)),
        "other_calls_failed": idle_failed + storm_failed,
    }


def start_profilers(
    platform: BenchPlatform, out: Path, seconds: float, *, prefix: str = ""
) -> list[subprocess.Popen[bytes]]:
    """py-spy flame graphs of the send path's services and `parley up` during a maximum-rate phase."""
    import shutil
    import sys

    py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if py_spy is None:
        print("[bench] py-spy not found; no profiles")
        return []
    out.mkdir(parents=True, exist_ok=True)
    # `parley up` too: its front doors relay every byte between services.
    assert platform.process is not None
    pids = {service: platform.pid_of(service) for service in ("gateway", "messaging", "storage")}
    pids["up"] = platform.process.pid
    return [
        subprocess.Popen(
            [
                py_spy,
                "record",
                "--pid",
                str(pid),
                "--duration",
                str(int(seconds)),
                "--rate",
                "200",
                "--format",
                "speedscope",
                "--output",
                str(out / f"{prefix}{service}.speedscope.json"),
                "--nonblocking",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for service, pid in pids.items()
    ]


def summarise_profiles(folder: Path) -> dict[str, list[str]]:
    from parley_bench.profile_summary import top_self

    return {p.name.split(".")[0]: top_self(p, limit=8) for p in sorted(folder.glob("*.speedscope.json"))}


def goals(result: dict[str, Any]) -> list[dict[str, Any]]:
    rows = write_path_goals(result["write_path"]) if "write_path" in result else []
    rows += _platform_goals(result) if "sends" in result else []
    rows += history_goals(result["history"]) if "history" in result else []
    if (live := result.get("live_streams")) is not None:
        rows += [
            (
                f"gateway peak RSS with {live['live_streams']} live streams <= 1 GiB",
                live["gateway_rss_peak_gib"],
                "<=",
                1.0,
            ),
            (
                "live-stream deliveries / expected == 1",
                ratio(live["deliveries"], live["deliveries_expected"]),
                ">=",
                1.0,
            ),
        ]
    out = []
    for name, value, op, target in rows:
        met = (value >= target) if op == ">=" else (value <= target)
        out.append(
            {"goal": name, "value": round(value, 3), "target": target, "met": bool(met and not math.isnan(value))}
        )
    return out


def _platform_goals(result: dict[str, Any]) -> list[tuple[str, float, str, float]]:
    b, s, f, lg = result["baselines"], result["sends"], result["fanout"], result["logins"]
    return [
        (
            "acknowledged sends/s >= 0.5 x gRPC echo QPS",
            ratio(s["acknowledged_sends_per_s"], b["grpc_echo_qps"]),
            ">=",
            0.5,
        ),
        ("send-to-deliver p99 at 50% load <= 50 ms", s["send_to_deliver_p99_ms"], "<=", 50.0),
        (
            "fan-out deliveries/s, 50 members / 1 member >= 5",
            ratio(f["members_50"]["deliveries_per_s"], f["members_1"]["deliveries_per_s"]),
            ">=",
            5.0,
        ),
        ("archive lag (max) at max sustained rate <= 1000 ms", s["archive_lag_max_ms"], "<=", 1000.0),
        (
            "logins/s >= 0.7 x argon2id capacity (all CPUs)",
            ratio(lg["logins_per_s"], b["argon2id_hashes_per_s_all_cpus"]),
            ">=",
            0.7,
        ),
        (
            "other calls' p99 in a login storm <= 2 x idle",
            ratio(lg["other_calls_storm_p99_ms"], lg["other_calls_idle_p99_ms"]),
            "<=",
            2.0,
        ),
    ]


def table(result: dict[str, Any]) -> str:
    lines = [f"Parley benchmark {result['started_at']} ({result['mode']}), {result['machine']}", ""]
    for section in (
        "baselines",
        "bench_settings",
        "compare",
        "write_path",
        "write_path_two_instances",
        "sends",
        "fanout",
        "logins",
        "live_streams",
        "history",
    ):
        if section not in result:
            continue
        lines.append(f"[{section}]")
        lines.extend(f"  {key:<60} {value}" for key, value in _flat(result[section]))
        lines.append("")
    for service, rows in result.get("profiles", {}).items():
        lines.append(f"[profile: {service}, self time of busy samples during the maximum-rate phase]")
        lines.extend(f"  {row}" for row in rows)
        lines.append("")
    lines.append("[goals: reported, not asserted]")
    for row in result["goals"]:
        lines.append(f"  {'MET ' if row['met'] else 'NOT '} {row['goal']:<56} {row['value']} (target {row['target']})")
    return "\n".join(lines) + "\n"


def _flat(section: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for key, value in section.items():
        if isinstance(value, dict):
            rows += _flat(value, f"{prefix}{key}.")
        else:
            rows.append((f"{prefix}{key}", value))
    return rows


async def run(
    *,
    quick: bool,
    out_dir: Path,
    workdir: Path,
    profile: bool,
    live_streams_only: bool = False,
    write_path_only: bool = False,
    history_only: bool = False,
    compare: str | None = None,
    compare_rounds: int = 2,
) -> dict[str, Any]:
    plan = Plan.of(quick=quick)
    only = (
        ", live streams only"
        if live_streams_only
        else ", write path only"
        if write_path_only
        else ", history only"
        if history_only
        else ""
    )
    result: dict[str, Any] = {
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "mode": ("quick" if quick else "full") + only,
        "machine": f"{host.system()} {host.machine()} python {host.python_version()}",
    }
    if compare is not None:
        variable, _, values = compare.partition("=")
        print("[bench] baselines ...", flush=True)
        result["baselines"] = await measure_baselines(plan, workdir, argon2=False)
        result["compare"] = await compare_settings(
            workdir=workdir,
            variable=variable,
            values=values.split(","),
            rounds=compare_rounds,
            seconds=plan.seconds,
            sequential=plan.sequential_sends,
            baselines=result["baselines"],
            env=UNLIMITED_CALLS,
        )
        result["goals"] = []
        write_report(result, out_dir)
        return result
    if not live_streams_only and not history_only:
        await measure_platform(
            plan, result, out_dir=out_dir, workdir=workdir, profile=profile, write_path_only=write_path_only
        )
    if not write_path_only and not history_only:
        print(f"[bench] {plan.live_streams} live streams on one gateway (a platform of their own) ...", flush=True)
        result["live_streams"] = await measure_live_streams(workdir, streams=plan.live_streams)
    if not write_path_only and not live_streams_only:
        print("[bench] history pages: a channel of 100 messages beside a large one (the archive API) ...", flush=True)
        result["history"] = await measure_history(workdir, quick=quick)
    result["goals"] = goals(result)
    if profile and not live_streams_only and not history_only:
        result["profiles"] = summarise_profiles(out_dir / "profiles")
    write_report(result, out_dir)
    return result


# The gateway's per-address and per-user budgets (calls and connections) are lifted on the bench platform: every client
# of the bench shares one loopback address, and what is measured is the platform, not its limits.
UNLIMITED_CALLS = {
    "PARLEY_GATEWAY_SOURCE_RATE": "1000000",
    "PARLEY_GATEWAY_SOURCE_BURST": "1000000",
    "PARLEY_GATEWAY_USER_RATE": "1000000",
    "PARLEY_GATEWAY_USER_BURST": "1000000",
    "PARLEY_CLIENT_CONNECTIONS_PER_SOURCE": "1000000",
}


async def measure_platform(
    plan: Plan, result: dict[str, Any], *, out_dir: Path, workdir: Path, profile: bool, write_path_only: bool = False
) -> None:
    """Baselines, then the write path, sends, fan-out and logins on one platform; then the write
    path again on a platform with two instances of each stateless service."""
    print("[bench] baselines ...", flush=True)
    result["baselines"] = await measure_baselines(plan, workdir, argon2=not write_path_only)
    platform = BenchPlatform(workdir / "data", env=dict(UNLIMITED_CALLS))
    result["bench_settings"] = {
        "gateway_calls_per_s_per_address_and_user": UNLIMITED_CALLS["PARLEY_GATEWAY_SOURCE_RATE"],
        "event_loop": os.environ.get("PARLEY_EVENT_LOOP", "(default)"),
    }
    print("[bench] starting the platform ...", flush=True)
    await platform.start()
    bench = Bench(platform.gateway_address, platform.ca_cert)
    try:
        result["write_path"] = await measure_write_path(
            bench,
            platform,
            result["baselines"],
            seconds=plan.seconds,
            sequential=plan.sequential_sends,
            profile_dir=out_dir / "profiles" if profile else None,
        )
        if not write_path_only:
            profile_dir = out_dir / "profiles" if profile else None
            await _other_phases(bench, plan, result, profile_dir=profile_dir, platform=platform)
    finally:
        await bench.close()
        await platform.stop()
    # After the one-instance platform stopped: the two never compete for the cores.
    result["write_path_two_instances"] = await measure_two_instances(
        workdir, result["baselines"], result["write_path"], seconds=plan.seconds, env=dict(UNLIMITED_CALLS)
    )


async def _other_phases(
    bench: Bench, plan: Plan, result: dict[str, Any], *, profile_dir: Path | None, platform: BenchPlatform
) -> None:
    """Sends, fan-out and logins on the one-instance platform (not in `--write-path-only`)."""
    print("[bench] sends, latency at half load, archive lag ...", flush=True)
    sends = await measure_sends(bench, plan, profile_dir, platform)
    pairs = sends.pop("_pairs")
    result["sends"] = sends
    print("[bench] fan-out ...", flush=True)
    fanout = await measure_fanout(bench, plan)
    usernames = fanout.pop("_usernames")
    result["fanout"] = fanout
    print("[bench] login storm ...", flush=True)
    result["logins"] = await measure_logins(bench, plan, usernames, pairs[0])


def write_report(result: dict[str, Any], out_dir: Path) -> None:
    """One JSON and one table per run, plus `latest.*` pointing at the newest."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = result["started_at"].replace(":", "")
    (out_dir / f"bench-{stamp}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / f"bench-{stamp}.txt").write_text(table(result))
    (out_dir / "latest.json").write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / "latest.txt").write_text(table(result))

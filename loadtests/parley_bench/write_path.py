"""The write path: what one message costs the whole platform, and how fast one channel and many go.

Every figure here is taken on one platform in one run, beside the same run's gRPC echo and
JetStream baselines (the denominators of the ratios):

- platform CPU per message: user + system time of every process of the platform (`parley up`
  itself with its front doors, each service, nats-server), read from /proc before and after a
  phase, over the messages acknowledged in it. The phase ends only when every message has been
  delivered live and archived, so that work is counted too;
- one channel, 10 members each sending back to back (10 concurrent senders), one member's live
  stream receiving: messages/s and send latency;
- 100 channels, one sender each (10 users, each sending to 10 channels of their own);
- one send at a time: the send call's p50 and send -> live delivery p99;
- send -> live delivery p99 with the one channel loaded open-loop at 50 % of its measured maximum.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from parley_bench.platform_proc import BenchPlatform
from parley_bench.scenarios import Bench, Deliveries, Member, open_loop, wait_for_count
from parley_bench.stats import percentile, ratio
from parley_client import ParleyError

SHARED_SENDERS = 10
CHANNELS_PER_USER = 10
DRAIN_TIMEOUT_S = 120.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat(pid: int) -> tuple[int, str, float] | None:
    """(parent pid, command name, CPU seconds) of one process; None once it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    name = raw[raw.index("(") + 1 : raw.rindex(")")]
    fields = raw[raw.rindex(")") + 2 :].split()
    # fields[0] is the state (field 3 of proc(5)); utime and stime are fields 14 and 15.
    return int(fields[1]), name, (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


@dataclass(frozen=True)
class CpuSnapshot:
    taken_at: float
    seconds_by_process: dict[str, float]


class PlatformCpu:
    """CPU time of the platform's process tree, each process named by what it runs."""

    def __init__(self, platform: BenchPlatform) -> None:
        self.platform = platform

    def _names(self) -> dict[int, str]:
        state = self.platform.state()
        names: dict[int, str] = {}
        for service, entry in state.get("services", {}).items():
            for n, instance in enumerate(entry.get("instances", [])):
                if isinstance(instance.get("pid"), int):
                    names[instance["pid"]] = service if n == 0 else f"{service}#{n + 1}"
        for n, pid in enumerate(state.get("nats_pids", [])):
            names[pid] = "nats-server" if n == 0 else f"nats-server#{n + 1}"
        return names

    def snapshot(self) -> CpuSnapshot:
        assert self.platform.process is not None
        root = self.platform.process.pid
        stats = {int(p): s for p in os.listdir("/proc") if p.isdigit() and (s := _stat(int(p))) is not None}
        children: defaultdict[int, list[int]] = defaultdict(list)
        for pid, (ppid, _, _) in stats.items():
            children[ppid].append(pid)
        names = self._names()
        seconds: defaultdict[str, float] = defaultdict(float)
        todo = [root]
        while todo:
            pid = todo.pop()
            if pid in stats:
                seconds[names.get(pid, "parley-up" if pid == root else stats[pid][1])] += stats[pid][2]
            todo.extend(children.get(pid, []))
        for pid, name in names.items():  # nats-server may run outside the tree (NATS_URL given)
            if name not in seconds and pid in stats:
                seconds[name] += stats[pid][2]
        return CpuSnapshot(time.perf_counter(), dict(seconds))


def cpu_used(before: CpuSnapshot, after: CpuSnapshot, messages: int) -> dict[str, Any]:
    """CPU ms per message, whole platform and per process, between two snapshots."""
    per_process = {
        name: after.seconds_by_process[name] - before.seconds_by_process.get(name, 0.0)
        for name in after.seconds_by_process
    }
    total = sum(per_process.values())
    wall = after.taken_at - before.taken_at
    return {
        "platform_cpu_ms_per_message": round(1000.0 * total / messages, 3) if messages else math.nan,
        "platform_cpu_cores_busy": round(total / wall, 2) if wall > 0 else math.nan,
        "cpu_ms_per_message_by_process": {
            name: round(1000.0 * s / messages, 3) if messages else math.nan
            for name, s in sorted(per_process.items(), key=lambda item: -item[1])
        },
    }


@dataclass
class Sends:
    acknowledged: int = 0
    failed: int = 0
    latencies_s: list[float] = field(default_factory=list)
    newest_seq: dict[str, int] = field(default_factory=dict)  # channel -> highest acknowledged channel_seq

    def acked(self, channel_id: str, seq: int, started: float) -> None:
        self.latencies_s.append(time.perf_counter() - started)
        self.acknowledged += 1
        self.newest_seq[channel_id] = max(self.newest_seq.get(channel_id, 0), seq)


async def _closed_loop(
    senders: list[tuple[Member, str]], seconds: float, deliveries: Deliveries
) -> tuple[Sends, float]:
    sends = Sends()
    deadline = time.perf_counter() + seconds

    async def loop(member: Member, channel_id: str) -> None:
        while time.perf_counter() < deadline:
            body = f"w {uuid.uuid4().hex}"
            started = time.perf_counter()
            deliveries.sent_at[body] = started
            try:
                sent = await member.client.send(channel_id, body)
            except ParleyError:
                sends.failed += 1
                continue
            sends.acked(channel_id, sent.channel_seq, started)

    started = time.perf_counter()
    await asyncio.gather(*(loop(m, c) for m, c in senders))
    return sends, time.perf_counter() - started


async def _archived(readers: dict[str, Member], newest_seq: dict[str, int], timeout: float) -> bool:
    """Until history serves each channel's newest acknowledged message (read by a member)."""
    deadline = time.perf_counter() + timeout
    for channel_id, seq in newest_seq.items():
        delay = 0.005
        while True:
            page = await readers[channel_id].client.history(channel_id, after_seq=seq - 1, limit=1)
            if page.messages and page.messages[0].channel_seq == seq:
                break
            if time.perf_counter() > deadline:
                return False
            await asyncio.sleep(delay)  # polling history until the archive has caught up, bounded
            delay = min(delay * 2, 0.05)
    return True


def ms(seconds: float) -> float:
    return round(seconds * 1000.0, 2) if not math.isnan(seconds) else math.nan


async def _phase(
    name: str,
    senders: list[tuple[Member, str]],
    *,
    seconds: float,
    deliveries: Deliveries,
    cpu: PlatformCpu,
    baselines: dict[str, float],
) -> dict[str, Any]:
    print(f"[bench] write path: {name} ...", flush=True)
    deliveries.reset()
    before = cpu.snapshot()
    sends, elapsed = await _closed_loop(senders, seconds, deliveries)
    delivered = await wait_for_count(lambda: deliveries.count, sends.acknowledged, timeout=DRAIN_TIMEOUT_S)
    archived = await _archived({c: m for m, c in senders}, sends.newest_seq, DRAIN_TIMEOUT_S)
    after = cpu.snapshot()
    per_s = sends.acknowledged / elapsed if elapsed else 0.0
    return {
        "senders": len(senders),
        "channels": len({c for _, c in senders}),
        "messages_per_s": round(per_s, 1),
        "over_grpc_echo_qps": round(ratio(per_s, baselines["grpc_echo_qps"]), 4),
        "over_jetstream_publish_consume": round(ratio(per_s, baselines["jetstream_publish_consume_per_s"]), 4),
        "acknowledged": sends.acknowledged,
        "failed": sends.failed,
        "send_p50_ms": ms(percentile(sends.latencies_s, 0.5)),
        "send_p99_ms": ms(percentile(sends.latencies_s, 0.99)),
        "send_to_deliver_p99_ms": ms(percentile(deliveries.latencies_s, 0.99)),
        "all_delivered_live": delivered,
        "all_archived": archived,
        **cpu_used(before, after, sends.acknowledged),
    }


async def _one_at_a_time(member: Member, channel_id: str, count: int, deliveries: Deliveries) -> dict[str, Any]:
    """Sequential sends, each awaited and then its live delivery awaited: the unloaded latencies."""
    print("[bench] write path: one send at a time ...", flush=True)
    deliveries.reset()
    calls: list[float] = []
    for i in range(count):
        body = f"seq {i} {uuid.uuid4().hex}"
        started = time.perf_counter()
        deliveries.sent_at[body] = started
        await member.client.send(channel_id, body)
        calls.append(time.perf_counter() - started)
        await wait_for_count(lambda: deliveries.count, i + 1, timeout=10.0)
    return {
        "sends": count,
        "send_p50_ms": ms(percentile(calls, 0.5)),
        "send_p99_ms": ms(percentile(calls, 0.99)),
        "send_to_deliver_p50_ms": ms(percentile(deliveries.latencies_s, 0.5)),
        "send_to_deliver_p99_ms": ms(percentile(deliveries.latencies_s, 0.99)),
    }


async def _half_load(
    senders: list[tuple[Member, str]], max_per_s: float, seconds: float, deliveries: Deliveries
) -> dict[str, Any]:
    """The one channel loaded open-loop at half its measured maximum."""
    print("[bench] write path: send -> live delivery at 50 % of the maximum ...", flush=True)
    deliveries.reset()
    rate = max(1.0, 0.5 * max_per_s)

    async def send_one(i: int) -> None:
        member, channel_id = senders[i % len(senders)]
        body = f"half {i} {uuid.uuid4().hex}"
        deliveries.sent_at[body] = time.perf_counter()
        await member.client.send(channel_id, body)

    ok, failed, calls = await open_loop(send_one, rate=rate, seconds=seconds)
    complete = await wait_for_count(lambda: len(deliveries.latencies_s), ok, timeout=DRAIN_TIMEOUT_S)
    return {
        "rate_per_s": round(rate, 1),
        "acknowledged": ok,
        "failed": failed,
        "all_delivered_live": complete,
        "send_p99_ms": ms(percentile(calls, 0.99)),
        "send_to_deliver_p50_ms": ms(percentile(deliveries.latencies_s, 0.5)),
        "send_to_deliver_p99_ms": ms(percentile(deliveries.latencies_s, 0.99)),
    }


async def measure_write_path(
    bench: Bench,
    platform: BenchPlatform,
    baselines: dict[str, float],
    *,
    seconds: float,
    sequential: int,
    profile_dir: Path | None = None,
    throughput_only: bool = False,
) -> dict[str, Any]:
    """Every write-path figure; `throughput_only`: the two closed-loop phases alone."""
    from parley_bench.run import start_profilers

    users = await bench.new_members("wp", SHARED_SENDERS)
    owner = users[0]
    shared = (await owner.client.create_channel("write-path")).channel_id
    for user in users[1:]:
        await user.client.join_channel(shared)
    own: list[tuple[Member, str]] = []
    for n, user in enumerate(users):
        for k in range(CHANNELS_PER_USER):
            own.append((user, (await user.client.create_channel(f"wp-{n}-{k}")).channel_id))
    deliveries = Deliveries()
    # One member of the shared channel receives it live; every user receives their own channels.
    for user in users:
        mine = [c for m, c in own if m is user]
        await bench.listen(user, [shared, *mine] if user is owner else mine, deliveries)
    cpu = PlatformCpu(platform)
    one_channel = [(user, shared) for user in users]
    result: dict[str, Any] = {"baseline_grpc_echo_qps": baselines["grpc_echo_qps"]}
    result["baseline_jetstream_publish_consume_per_s"] = baselines["jetstream_publish_consume_per_s"]
    if not throughput_only:
        result["sequential"] = await _one_at_a_time(owner, shared, sequential, deliveries)
    profilers = start_profilers(platform, profile_dir, seconds, prefix="write-path-") if profile_dir else []
    phase = partial(_phase, seconds=seconds, deliveries=deliveries, cpu=cpu, baselines=baselines)
    result["one_channel_10_senders"] = await phase("1 channel x 10 senders", one_channel)
    for profiler in profilers:
        profiler.wait(timeout=120)
    result["channels_100_one_sender_each"] = await phase("100 channels x 1 sender", own)
    if not throughput_only:
        result["half_load_one_channel"] = await _half_load(
            one_channel, result["one_channel_10_senders"]["messages_per_s"], seconds, deliveries
        )
    return result


def write_path_goals(wp: dict[str, Any]) -> list[tuple[str, float, str, float]]:
    """Issue 14's goals, reported beside the figures (absolute: compare the ratios across machines)."""
    one = wp["one_channel_10_senders"]
    return [
        ("messages/s, 1 channel x 10 senders >= 700", one["messages_per_s"], ">=", 700.0),
        ("send p99 under that load <= 50 ms", one["send_p99_ms"], "<=", 50.0),
        ("sequential send p50 <= 3 ms", wp["sequential"]["send_p50_ms"], "<=", 3.0),
        ("send -> live delivery p99, one at a time <= 10 ms", wp["sequential"]["send_to_deliver_p99_ms"], "<=", 10.0),
        ("platform CPU per message, 1 channel x 10 senders <= 1.3 ms", one["platform_cpu_ms_per_message"], "<=", 1.3),
    ]

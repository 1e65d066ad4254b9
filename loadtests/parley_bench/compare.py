"""Two settings of the platform side by side in one run: `--compare PARLEY_EVENT_LOOP=asyncio,uvloop`.

On a shared machine the load of everything else moves from minute to minute, so a figure from
another run says little. Here each value gets its own platform, the values alternate (A, B, A,
B, ...), and each figure is the median over the rounds, beside its ratio to the first value's.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from parley_bench.platform_proc import BenchPlatform
from parley_bench.scenarios import Bench
from parley_bench.write_path import measure_write_path

FIGURES = {
    "one_channel_10_senders.messages_per_s": ("one_channel_10_senders", "messages_per_s"),
    "one_channel_10_senders.send_p99_ms": ("one_channel_10_senders", "send_p99_ms"),
    "one_channel_10_senders.platform_cpu_ms_per_message": ("one_channel_10_senders", "platform_cpu_ms_per_message"),
    "channels_100.messages_per_s": ("channels_100_one_sender_each", "messages_per_s"),
    "channels_100.platform_cpu_ms_per_message": ("channels_100_one_sender_each", "platform_cpu_ms_per_message"),
    "sequential.send_p50_ms": ("sequential", "send_p50_ms"),
    "sequential.send_to_deliver_p99_ms": ("sequential", "send_to_deliver_p99_ms"),
    "half_load.send_to_deliver_p99_ms": ("half_load_one_channel", "send_to_deliver_p99_ms"),
}
ROUND_FIGURES = (
    "one_channel_10_senders.messages_per_s",
    "one_channel_10_senders.platform_cpu_ms_per_message",
    "channels_100.platform_cpu_ms_per_message",
    "sequential.send_p50_ms",
    "one_channel_10_senders.cpu_ms_per_message.gateway",
    "one_channel_10_senders.cpu_ms_per_message.messaging",
    "one_channel_10_senders.cpu_ms_per_message.storage",
    "one_channel_10_senders.cpu_ms_per_message.nats-server",
)
PROCESSES = ("gateway", "messaging", "storage", "nats-server", "parley-up")


def _figures(write_path: dict[str, Any]) -> dict[str, float]:
    out = {name: float(write_path[section][key]) for name, (section, key) in FIGURES.items()}
    by_process = write_path["one_channel_10_senders"]["cpu_ms_per_message_by_process"]
    out |= {f"one_channel_10_senders.cpu_ms_per_message.{p}": float(by_process.get(p, 0.0)) for p in PROCESSES}
    return out


async def compare_settings(
    *,
    workdir: Path,
    variable: str,
    values: list[str],
    rounds: int,
    seconds: float,
    sequential: int,
    baselines: dict[str, float],
    env: dict[str, str],
) -> dict[str, Any]:
    runs: dict[str, list[dict[str, float]]] = {value: [] for value in values}
    for round_no in range(rounds):
        for value in values:
            print(f"[bench] compare: {variable}={value}, round {round_no + 1} of {rounds} ...", flush=True)
            platform = BenchPlatform(
                workdir / f"value{values.index(value)}-{round_no}" / "data", env={**env, variable: value}
            )
            await platform.start()
            bench = Bench(platform.gateway_address, platform.ca_cert)
            try:
                measured = await measure_write_path(bench, platform, baselines, seconds=seconds, sequential=sequential)
            finally:
                await bench.close()
                await platform.stop()
            runs[value].append(_figures(measured))
    medians = {value: {k: statistics.median(r[k] for r in rows) for k in rows[0]} for value, rows in runs.items()}
    first = medians[values[0]]
    return {
        "variable": variable,
        "rounds": rounds,
        **{
            value: {
                k: f"{v:.3f} ({v / first[k]:.2f}x of {values[0]})" if first[k] else f"{v:.3f}"
                for k, v in figures.items()
            }
            for value, figures in medians.items()
        },
        "each_round": {
            f"{value}.{k}": [round(r[k], 2) for r in rows] for value, rows in runs.items() for k in ROUND_FIGURES
        },
    }

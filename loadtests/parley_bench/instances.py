"""The write path with two instances of each stateless service beside one (issue 14).

A platform of its own, started as `parley up --instances gateway=2,messaging=2,auth=2` starts it:
the gateways share the client port (the kernel spreads the bench's connections over them) and
each service's front door spreads the gateways' calls over its instances. The same closed-loop
phases as the one-instance write path run on it, and each figure is given beside that run's.
On a 2-core machine two instances compete for the same cores: the figure says what a second
instance costs and whether the channel's order holds, not how far a bigger host scales.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from parley_bench.platform_proc import BenchPlatform
from parley_bench.scenarios import Bench
from parley_bench.write_path import measure_write_path

TWO_OF_EACH = "gateway=2,messaging=2,auth=2"
PHASES = ("one_channel_10_senders", "channels_100_one_sender_each")
FIGURES = ("messages_per_s", "send_p99_ms", "platform_cpu_ms_per_message")


async def measure_two_instances(
    workdir: Path,
    baselines: dict[str, float],
    one_instance: dict[str, Any],
    *,
    seconds: float,
    env: dict[str, str],
) -> dict[str, Any]:
    print(f"[bench] write path with two instances ({TWO_OF_EACH}) on a platform of its own ...", flush=True)
    platform = BenchPlatform(workdir / "two-instances" / "data", env=env, up_args=("--instances", TWO_OF_EACH))
    await platform.start()
    bench = Bench(platform.gateway_address, platform.ca_cert)
    try:
        two = await measure_write_path(bench, platform, baselines, seconds=seconds, sequential=0, throughput_only=True)
    finally:
        await bench.close()
        await platform.stop()
    result: dict[str, Any] = {"instances": TWO_OF_EACH}
    for phase in PHASES:
        result[phase] = {
            **{figure: two[phase][figure] for figure in FIGURES},
            **{f"{f}_over_one_instance": _over(two[phase][f], one_instance[phase][f]) for f in FIGURES},
            "failed": two[phase]["failed"],
            "all_delivered_live": two[phase]["all_delivered_live"],
            "all_archived": two[phase]["all_archived"],
            "cpu_ms_per_message_by_process": two[phase]["cpu_ms_per_message_by_process"],
        }
    return result


def _over(value: float, base: float) -> float:
    return round(value / base, 3) if base else float("nan")

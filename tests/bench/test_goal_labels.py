"""Each goal line `make bench` prints names the phase its figure comes from: the write path
measures one channel with 10 senders and 100 channels with one each, and a goal judged on one
of them must not read as judging both."""

from __future__ import annotations

from parley_bench.write_path import write_path_goals

ONE_CHANNEL = "1 channel x 10 senders"


def test_goals_judged_on_the_one_channel_phase_name_it() -> None:
    one = {"messages_per_s": 1.0, "send_p99_ms": 2.0, "platform_cpu_ms_per_message": 3.0}
    sequential = {"send_p50_ms": 10.0, "send_to_deliver_p99_ms": 11.0}
    goals = write_path_goals({"one_channel_10_senders": one, "sequential": sequential})

    previous = ""
    for label, value, _, _ in goals:
        if value in one.values():
            # "under that load" names it through the line before, which must name it.
            named = label if "under that load" not in label else previous
            assert ONE_CHANNEL in named, label
        previous = label
    assert "platform CPU per message, 1 channel x 10 senders <= 1.3 ms" in [label for label, *_ in goals]

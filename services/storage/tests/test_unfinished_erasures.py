"""Resuming unfinished erasures at start, as a periodic job (parley_core.jobs) driven by a manual
pause: every one left is tried each round, the pause after a round that left some doubles, and
the job ends itself once none is left. No server: the erasure itself is test_erasure_reaches_the_log.py's."""

from __future__ import annotations

from parley_storage.stream_erasure import RESUME_PAUSE_FIRST_S, RESUME_PAUSE_MAX_S, UnfinishedErasures
from parley_testing.jobs import ManualPause
from parley_testing.waiting import until


async def test_each_round_tries_what_is_left_pausing_longer_until_none_is_left() -> None:
    pause, tried = ManualPause(), []
    failing = {"bob": 3}  # bob's owner is down for three rounds

    async def erase(user_id: str) -> None:
        tried.append(user_id)
        if failing.get(user_id, 0) > 0:
            failing[user_id] -= 1
            raise RuntimeError("messaging is away")

    unfinished = UnfinishedErasures(erase, ["alice", "bob"], pause=pause)
    unfinished.job.start()
    await pause.paused(1)
    assert tried == ["alice", "bob"]
    assert unfinished.left == ["bob"]
    for round_ in (2, 3):
        pause.elapse()
        await pause.paused(round_)
    assert tried == ["alice", "bob", "bob", "bob"]
    assert pause.asked == [RESUME_PAUSE_FIRST_S, RESUME_PAUSE_FIRST_S * 2, RESUME_PAUSE_FIRST_S * 4]
    pause.elapse()
    await until(lambda: not unfinished.job.running, "the job to end itself after the last erasure finished", 10.0)
    assert tried == ["alice", "bob", "bob", "bob", "bob"]
    assert unfinished.left == []
    assert len(pause.asked) == 3, "no pause after the round that finished the last one"
    await unfinished.job.stop()


async def test_the_pause_stops_growing_at_its_most() -> None:
    pause = ManualPause()

    async def erase(user_id: str) -> None:
        raise RuntimeError("auth is away")

    unfinished = UnfinishedErasures(erase, ["alice"], pause=pause)
    unfinished.job.start()
    rounds = 1
    while RESUME_PAUSE_MAX_S not in pause.asked:
        await pause.paused(rounds)
        pause.elapse()
        rounds += 1
    await pause.paused(rounds)
    assert pause.asked[-1] == RESUME_PAUSE_MAX_S
    await unfinished.job.stop()
    assert unfinished.left == ["alice"]

import asyncio

from parley_storage.progress import ArchiveProgress


async def test_waiters_wake_when_the_archive_reaches_their_sequence() -> None:
    progress = ArchiveProgress({"MSG": 3})
    assert await progress.wait_for("MSG", 3, timeout=0.01)
    waiter = asyncio.create_task(progress.wait_for("MSG", 5, timeout=5))
    await progress.advance("MSG", 4)
    assert not waiter.done()
    await progress.advance("MSG", 5)
    assert await waiter
    await progress.advance("MSG", 2)  # never goes backwards
    assert progress.archived("MSG") == 5


async def test_a_wait_that_is_never_satisfied_times_out() -> None:
    progress = ArchiveProgress()
    assert not await progress.wait_for("AUTH", 1, timeout=0.05)

"""shared.loops.run_rounds and the outbox relay's loop tell a CancelledError that leaked out of a library (a
client cancelling a request's future when it drops a connection, as aiokafka does) from the service stopping:
the first is one failed round, the loop goes on; the second ends the loop. Before, the first ended it without a
word (the dashboard's sampler stopped reading, and its last reading stayed on the page as if it were now)."""

from __future__ import annotations

import asyncio

from shared.loops import run_rounds
from shared.recovery import cancelled_from_outside


async def _inner_future_cancelled_by_its_owner() -> None:
    """What aiokafka does to a request in flight when it closes the connection under it."""
    fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_soon(fut.cancel)
    await fut


async def test_a_cancelled_inner_future_is_a_failed_round_and_the_loop_goes_on() -> None:
    stopping = asyncio.Event()
    rounds: list[str] = []

    async def round_() -> bool:
        rounds.append("round")
        if len(rounds) == 1:
            await _inner_future_cancelled_by_its_owner()
        if len(rounds) == 3:
            stopping.set()
        return False

    await asyncio.wait_for(run_rounds("test", round_, stopping=stopping, idle=lambda: 0.01), 10)
    assert rounds == ["round"] * 3  # the leaked CancelledError did not end the loop


async def test_cancelling_the_loops_task_still_ends_it() -> None:
    started = asyncio.Event()

    async def round_() -> bool:
        started.set()
        await asyncio.sleep(30)
        return False

    task = asyncio.create_task(run_rounds("test", round_, stopping=asyncio.Event(), idle=lambda: 0.01))
    await asyncio.wait_for(started.wait(), 5)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=5)
    assert done and task.cancelled()


async def test_cancelled_from_outside_tells_the_two_apart() -> None:
    seen: list[bool] = []

    async def inner() -> None:
        try:
            await _inner_future_cancelled_by_its_owner()
        except asyncio.CancelledError:
            seen.append(cancelled_from_outside())
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            seen.append(cancelled_from_outside())
            raise

    task = asyncio.create_task(inner())
    await asyncio.sleep(0.05)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert seen == [False, True]


def test_an_old_reading_says_so_on_the_dashboard() -> None:
    from services.issuer.ops.dashboard import reading_errors

    latest = {"point": {"t": 1000.0}, "errors": {"kafka": None, "reconciler": None}}
    assert "sampler" not in reading_errors(latest, now=1010.0, interval=5)
    stale = reading_errors(latest, now=1100.0, interval=5)
    assert stale["sampler"] == "the last reading is 100 s old: lag and counts below are from then"
    assert stale["kafka"] is None and latest["errors"] == {"kafka": None, "reconciler": None}  # not changed

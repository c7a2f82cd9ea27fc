"""Background tasks stopped within a bound: one that loses its cancellation is cancelled again,
one that will not end is given up on (logged), and none of their errors reaches the shutdown."""

from __future__ import annotations

import asyncio
import contextlib

from structlog.testing import capture_logs

from ztproxy import background

BOUND = 20.0  # seconds; far beyond what each case needs, only reached if stop() waits for ever


async def loses_its_first_cancellation(lost: asyncio.Event) -> None:
    """A follower whose store call dropped the cancellation, as Python 3.11's ``asyncio.wait_for``
    does for an operation that ends as it comes: it goes on following."""
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        lost.set()
    await asyncio.Event().wait()


async def test_a_task_that_lost_its_cancellation_is_cancelled_again() -> None:
    lost = asyncio.Event()
    task = asyncio.create_task(loses_its_first_cancellation(lost))
    await asyncio.sleep(0)  # it waits now
    async with asyncio.timeout(BOUND):
        await background.stop(task)
    assert lost.is_set() and task.cancelled()


async def test_a_task_that_will_not_end_is_given_up_on_after_the_bound() -> None:
    let_go = asyncio.Event()
    loop = asyncio.get_running_loop()
    ends_by_itself = loop.time() + BOUND  # so that a stop() that waits for ever fails the test, not hangs it

    async def stubborn() -> None:
        while not let_go.is_set() and loop.time() < ends_by_itself:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(0.05)

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    with capture_logs() as events:
        async with asyncio.timeout(BOUND):
            await background.stop(task, within=0.2)
    assert not task.done()
    assert [e for e in events if e["event"] == "background_task_not_stopped"] == [
        {"event": "background_task_not_stopped", "log_level": "error",
         "tasks": ["test_a_task_that_will_not_end_is_given_up_on_after_the_bound.<locals>.stubborn"],
         "within_s": 0.2}]
    let_go.set()
    task.cancel()
    await asyncio.wait({task}, timeout=BOUND)
    assert task.done()


async def test_errors_and_finished_tasks_are_not_the_shutdowns() -> None:
    async def fails() -> None:
        raise RuntimeError("a follower's bug")

    failed, finished = asyncio.create_task(fails()), asyncio.create_task(asyncio.sleep(0))
    await asyncio.wait({failed, finished})
    waiting = asyncio.create_task(asyncio.Event().wait())
    async with asyncio.timeout(BOUND):
        await background.stop(failed, finished, waiting)  # the failure is not raised here
    assert waiting.cancelled() and finished.result() is None

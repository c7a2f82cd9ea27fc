"""The app's background tasks (store followers, IdP watchers), stopped within a bound when the app stops.

A cleanup context cancels its tasks, then waits for them. Waiting without a bound trusts each
task to let its cancellation through, and on Python 3.11 one may lose it: ``asyncio.wait_for``,
which redis-py runs around every command it sends, returns the result of an operation that
finished just as the cancellation came and drops the cancellation (CPython issue 86296, fixed
in 3.12). A follower of the store that loses it goes on following, so its cleanup context,
and the process after SIGTERM, waited for ever. :func:`stop` cancels a task that still runs
``RECANCEL_AFTER`` later once more, and gives up on it after ``within`` seconds (logged) so that
the rest of the shutdown goes on.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

RECANCEL_AFTER = 0.5  # seconds; a follower ends within milliseconds of its cancellation
STOP_WITHIN = 5.0  # seconds for all of a cleanup context's tasks to end

_log = structlog.get_logger("ztproxy.server")


async def stop(*tasks: asyncio.Task[Any], within: float = STOP_WITHIN) -> None:
    """Cancel ``tasks`` and wait until they end, cancelling again those that lost their
    cancellation, for ``within`` seconds at most; their errors are retrieved, not raised."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    running = {task for task in tasks if not task.done()}
    while running:
        left = deadline - loop.time()
        if left <= 0:
            # Left to the event loop's own end, which cancels what still runs once more.
            _log.error("background_task_not_stopped", tasks=sorted(_name(task) for task in running), within_s=within)
            break
        for task in running:
            task.cancel()
        _, running = await asyncio.wait(running, timeout=min(RECANCEL_AFTER, left))
    for task in tasks:
        if task.done() and not task.cancelled():
            task.exception()  # retrieved: a follower's failure was never the shutdown's


def stop_if_cancelled() -> None:
    """At each turn of a background task's loop: raise CancelledError if the task was cancelled
    and a library dropped the cancellation (see the module docstring), so the loop ends now."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _name(task: asyncio.Task[Any]) -> str:
    """What the task runs (``ServiceRevocations.follow``), for the log."""
    return str(getattr(task.get_coro(), "__qualname__", task.get_name()))

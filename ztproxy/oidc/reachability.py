"""The current view of one IdP's reachability, so that no browser is sent to an IdP that cannot answer.

The view is fed by every call ztproxy makes to the IdP (an answer says it is reachable, a
failure that it is not) and, while sign-ins happen, by a cheap check of its
discovery document every ``CHECK_INTERVAL``. An answer or failure is the current view for
``CURRENT_FOR`` seconds; a sign-in is sent to the IdP only when its last word, at most that
old, was an answer. When nothing current is known (an idle proxy), the sign-in waits for one
check first. So a sign-in meets an IdP that went down only if it starts within
``CURRENT_FOR`` of the outage (in practice within one check), and is refused with the 503
page after that. While the IdP is down each sign-in asks it again (one check at a time,
shared), so the first sign-in after its return goes through.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
from collections.abc import Awaitable, Callable

CURRENT_FOR = 1.0  # seconds an answer or a failure stays the current view: the stated bound
CHECK_INTERVAL = 0.5  # seconds between checks while the IdP is in use (start to start)
IN_USE_FOR = 60.0  # checks go on this long after the last sign-in, then pause
RECHECK_WAIT = 0.25  # seconds a sign-in waits for a new check of an IdP known to be down


class State(enum.Enum):
    REACHABLE = "reachable"
    UNREACHABLE = "unreachable"
    UNKNOWN = "unknown"  # nothing current: not asked for a while


class Reachability:
    """What ``check`` (one request to the IdP: did it answer?) and the IdP's calls last said."""

    def __init__(self, check: Callable[[], Awaitable[bool]], *, clock: Callable[[], float] = time.monotonic) -> None:
        self._check = check
        self._clock = clock
        self._answered_at = float("-inf")
        self._failed_at = float("-inf")
        self._used_at = float("-inf")
        self._in_use = asyncio.Event()
        self._checking: asyncio.Future[None] | None = None

    def answered(self) -> None:
        self._answered_at = self._clock()

    def failed(self) -> None:
        self._failed_at = self._clock()

    def state(self) -> State:
        now = self._clock()
        last = max(self._answered_at, self._failed_at)
        if now - last > CURRENT_FOR:
            return State.UNKNOWN
        return State.REACHABLE if self._answered_at > self._failed_at else State.UNREACHABLE

    @property
    def last_known_reachable(self) -> bool:
        """The last word, however old (metrics): no failure since the last answer."""
        return self._answered_at >= self._failed_at

    def use(self) -> None:
        """A sign-in is about to go to the IdP: keep the view current for a while."""
        self._used_at = self._clock()
        self._in_use.set()

    async def confirm(self) -> bool:
        """Whether a sign-in may be sent to the IdP now.

        Unless its last word was a current answer, the IdP is asked once more first: a
        stopped IdP refuses in a millisecond, one that is back answers, so sign-ins resume
        with the first one after its return. A sign-in waits for that check at most
        RECHECK_WAIT when the IdP was known to be down (one that hangs costs no more), for
        the whole check when nothing was known.
        """
        self.use()
        state = self.state()
        if state is State.REACHABLE:
            return True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(RECHECK_WAIT if state is State.UNREACHABLE else None):
                await self.check_now()
        return self.state() is State.REACHABLE

    async def check_now(self) -> None:
        """One check; callers arriving while it runs wait for the same one."""
        if self._checking is None or self._checking.done():
            self._checking = asyncio.ensure_future(self._run_check())
        await asyncio.shield(self._checking)

    async def watch(self, *, interval: float = CHECK_INTERVAL, always: bool = False) -> None:
        """Check every ``interval`` while in use (``always``: whatever the use); runs until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            if not always and self._clock() - self._used_at > IN_USE_FOR:
                self._in_use.clear()
                await self._in_use.wait()
            started = loop.time()
            await self.check_now()
            await asyncio.sleep(max(0.0, interval - (loop.time() - started)))

    async def _run_check(self) -> None:
        if await self._check():
            self.answered()
        else:
            self.failed()

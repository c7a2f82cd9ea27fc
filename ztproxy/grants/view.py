"""Each worker's copy of the grants in force: checked on every request to a route with a grant rule.

The copy maps a person (identity provider and subject) to the routes they hold an active
grant for and when each ends, so :meth:`GrantsView.holds` is two dict lookups and a clock
comparison, no I/O. It is read again from the store at start, whenever a change is
announced on :data:`~ztproxy.grants.registry.CHANNEL` (an approval opens access at once on
every worker and replica), at every (re)subscription, and whenever the generation it reads
every ``sessions.cache_ttl`` has changed: a worker that missed an announcement (pub/sub is at
most once) catches up within ``cache_ttl``. A grant's end needs no message at all: every
worker compares it with its clock. A grant ended early (revoked) is gone from the copy at the
announcement, or within ``cache_ttl``.

Open WebSockets wait on :meth:`GrantsView.until_ended`, which returns when the grant that
let them in ends or is no longer in the copy. The worker also writes down the time-driven
transitions it sees due (:meth:`~ztproxy.grants.registry.GrantRegistry.settle`), so the
``grant.ended`` and ``grant.expired`` steps are recorded and announced once, by whoever is
first. No aiohttp.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable

import structlog

from ztproxy.errors import SessionStoreUnavailable
from ztproxy.grants.model import ACTIVE, PENDING, GrantRefused, GrantRequest
from ztproxy.grants.registry import CHANNEL, GENERATION_KEY, GrantRegistry

MIN_POLL = 0.1  # seconds between reads of the generation, at least (cache_ttl may be 0)

_log = structlog.get_logger("ztproxy.grants")


class GrantsView:
    """This worker's copy of the active grants (see the module docstring)."""

    def __init__(self, registry: GrantRegistry, *, poll_every: float, clock: Callable[[], float] = time.time) -> None:
        self.registry = registry
        self.loaded = False
        self._poll_every = max(poll_every, MIN_POLL)
        self._clock = clock  # wall clock: every replica compares the same ends_at with its own
        self._active: dict[str, dict[str, float]] = {}  # person key -> route -> when its grant ends
        self._deadlines: list[tuple[float, str]] = []  # (when, request id) of the transitions time will make
        self._generation: bytes | None = None
        self._wake = asyncio.Event()  # an announcement was heard: read the table again
        self._changed = asyncio.Event()  # set (then replaced) at each new copy, for until_ended

    def holds(self, person: str, route: str, now: float) -> bool:
        """Whether ``person`` (``Person.key``) holds an active grant for ``route`` at ``now``."""
        routes = self._active.get(person)
        if routes is None:
            return False
        ends_at = routes.get(route)
        return ends_at is not None and now < ends_at

    def active_for(self, person: str, now: float) -> list[tuple[str, float]]:
        """The routes ``person`` holds an active grant for, with when each ends."""
        return sorted((route, ends_at) for route, ends_at in self._active.get(person, {}).items() if now < ends_at)

    def active_count(self) -> int:
        now = self._clock()
        return sum(1 for routes in self._active.values() for ends_at in routes.values() if now < ends_at)

    async def until_ended(self, person: str, route: str) -> None:
        """Return once ``person``'s grant for ``route`` has ended, run out or left the copy."""
        while True:
            routes = self._active.get(person, {})
            left = routes.get(route, 0.0) - self._clock()
            if left <= 0:
                return
            changed = self._changed
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await changed.wait()

    def replace(self, requests: Iterable[GrantRequest]) -> None:
        """A new copy from the requests the store keeps (as written)."""
        now = self._clock()
        active: dict[str, dict[str, float]] = {}
        deadlines = []
        for request in requests:
            if request.state == PENDING:
                deadlines.append((request.expires_at, request.id))
            elif request.state == ACTIVE and request.ends_at is not None:
                deadlines.append((request.ends_at, request.id))
                if request.state_at(now) == ACTIVE:
                    routes = active.setdefault(request.requester.key, {})
                    routes[request.route] = max(routes.get(request.route, 0.0), request.ends_at)
        self._active = active
        self._deadlines = sorted(deadlines)
        self.loaded = True
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def reload(self) -> None:
        """Read the generation, then the table (in that order: a writer changes them the other way)."""
        generation = await self.registry.store.get(GENERATION_KEY)
        self.replace(await self.registry.stored())
        self._generation = generation

    async def follow(self) -> None:
        """Keep this copy current, and settle what time has decided, until cancelled (an app task)."""
        store = self.registry.store
        subscription = asyncio.ensure_future(store.subscribe(CHANNEL, lambda _: self._wake.set(), self._wake.set))
        unavailable = False
        try:
            while True:
                wait = self._poll_every
                if self._deadlines:
                    wait = min(wait, max(0.0, self._deadlines[0][0] - self._clock()))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._wake.wait()
                heard = self._wake.is_set()
                self._wake.clear()
                try:
                    await self._settle_due()
                    if heard or not self.loaded or await store.get(GENERATION_KEY) != self._generation:
                        await self.reload()
                    unavailable = False
                except SessionStoreUnavailable:
                    if not unavailable:  # once per outage; the copy read last stays in force
                        _log.warning("grants_unavailable", loaded=self.loaded)
                    unavailable = True
        finally:
            subscription.cancel()
            await asyncio.gather(subscription, return_exceptions=True)

    async def _settle_due(self) -> None:
        now = self._clock()
        due = [request_id for when, request_id in self._deadlines if when <= now]
        if not due:
            return
        self._deadlines = [(when, request_id) for when, request_id in self._deadlines if when > now]
        for request_id in due:
            with contextlib.suppress(GrantRefused):  # busy: another worker is writing it down
                await self.registry.settle(request_id, now)
        # An ended grant leaves the copy by the clock already; the reload after settle tells waiters too.
        self.replace(await self.registry.stored())

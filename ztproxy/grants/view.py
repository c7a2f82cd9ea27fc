"""Each worker's copy of the grants in force: checked on every request to a route with a grant rule.

The copy maps a person (identity provider and subject) to the routes they hold an active
grant for and when each ends, so :meth:`GrantsView.holds` is two dict lookups and a clock
comparison, no I/O. The registry (:mod:`ztproxy.grants.registry`) keeps it in step with the
store's table: read at start, whenever a change is announced (an approval opens access at
once on every worker and replica), at every (re)subscription, and whenever the generation
read every ``sessions.cache_ttl`` has changed (the mechanics are
:class:`~ztproxy.sessions.shared_table.SharedTable`). A grant's end needs no message at all:
every worker compares it with its clock. A grant ended early (revoked) is gone from the copy
at the announcement, or within ``cache_ttl``.

Open WebSockets wait on :meth:`GrantsView.until_ended`, which returns when the grant that
let them in ends or is no longer in the copy. The copy also knows when time will change a
request (:meth:`GrantsView.next_due`, :meth:`GrantsView.take_due`), so that the registry
writes down the ``grant.ended`` and ``grant.expired`` steps once, by whoever is first. No
aiohttp.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable

from ztproxy.grants.model import ACTIVE, PENDING, GrantRequest


class GrantsView:
    """This worker's copy of the active grants (see the module docstring)."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock  # wall clock: every replica compares the same ends_at with its own
        self._active: dict[str, dict[str, float]] = {}  # person key -> route -> when its grant ends
        self._deadlines: list[tuple[float, str]] = []  # (when, request id) of the transitions time will make
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
        now = self.clock()
        return sum(1 for routes in self._active.values() for ends_at in routes.values() if now < ends_at)

    async def until_ended(self, person: str, route: str) -> None:
        """Return once ``person``'s grant for ``route`` has ended, run out or left the copy."""
        while True:
            routes = self._active.get(person, {})
            left = routes.get(route, 0.0) - self.clock()
            if left <= 0:
                return
            changed = self._changed
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await changed.wait()

    def replace(self, requests: Iterable[GrantRequest]) -> None:
        """A new copy from the requests the store keeps (as written)."""
        now = self.clock()
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
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def next_due(self) -> float | None:
        """Seconds until time changes a request in the copy, None when it changes none."""
        return self._deadlines[0][0] - self.clock() if self._deadlines else None

    def take_due(self, now: float) -> list[str]:
        """The ids of the requests time has changed by ``now``, each handed out once per copy."""
        due = [request_id for when, request_id in self._deadlines if when <= now]
        self._deadlines = [(when, request_id) for when, request_id in self._deadlines if when > now]
        return due

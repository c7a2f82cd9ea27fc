"""The access requests in the session store: the authority every worker and replica reads.

Requests are entries of the store's table :data:`TABLE` (by id, a JSON record, no secrets),
kept while they are pending or active and :attr:`GrantsConfig.retention` after, so they
survive restarts, reloads and the loss of any proxy. Each change is made under a short lock
in the store (one writer per request: two approvers on two replicas never both count, an
approval and a denial never both land) and announced: the table is a
:class:`~ztproxy.sessions.shared_table.SharedTable` (its generation under ``grants:generation``,
its announcements on :data:`CHANNEL`), which every worker's copy follows
(:mod:`ztproxy.grants.view`). Time-driven transitions (a grant's end, an unanswered request's
expiry) are written down by whichever worker settles them first; the lock and a re-read make
that, and its event, happen once.

Every step is a structured event (``grant_requested``, ``grant_approved``...) with the actor,
the subject, the route, the reason, the duration and the request id, counted in metrics, and
handed to the webhooks (:mod:`ztproxy.grants.webhooks`), which never hold the caller up.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

import structlog

from ztproxy import metrics
from ztproxy.config.grants import GrantsConfig
from ztproxy.grants.model import (
    ACTIVE,
    ADMIN,
    ENDED,
    EXPIRED,
    PENDING,
    GrantRefused,
    GrantRequest,
    Person,
    new_request,
)
from ztproxy.grants.view import GrantsView
from ztproxy.policy.criteria.grant import Grant
from ztproxy.sessions.shared_table import SharedTable
from ztproxy.sessions.store import SessionStore

TABLE = "grants"
CHANNEL = f"ztproxy:{TABLE}"
MIN_POLL = 0.1  # seconds between reads of the generation, at least (cache_ttl may be 0)
LOCK_TTL = 5.0  # a lock its holder never released (a crash) frees itself then
LOCK_WAIT = 3.0  # how long a change waits for another one on the same request
KEPT_PER_PENDING = 10  # a user's requests kept (ended ones included) at most, per max_pending_per_user

_log = structlog.get_logger("ztproxy.grants")

Notify = Callable[[str, GrantRequest, float], None]  # event name ("grant.approved"), the request, now
TermsOf = Callable[[str], Grant | None]  # a route's grant terms, in the configuration in force


class GrantRegistry:
    """Requests and their transitions, in the store, and ``view`` kept in step with them (see the
    module docstring); without a view (the admin API's), the registry only writes."""

    def __init__(self, store: SessionStore, config: GrantsConfig, *, notify: Notify | None = None,
                 view: GrantsView | None = None, poll_every: float = MIN_POLL) -> None:
        self.store = store
        self.config = config
        self.view = view
        self._notify = notify
        # This worker's copy reads each change it makes before the change is answered.
        self.table = SharedTable(store, TABLE, poll_every=max(poll_every, MIN_POLL),
                                 on_loaded=_ignored if view is None else self._loaded,
                                 deadlines=None if view is None else self)

    async def stored(self) -> list[GrantRequest]:
        """Every request kept, oldest first, as written (time-driven transitions not applied)."""
        return _requests(await self.table.entries())

    async def listed(self, now: float) -> list[GrantRequest]:
        """Every request kept, oldest first, each in its state at ``now``."""
        return [request.settled(now) for request in await self.stored()]

    async def get(self, request_id: str, now: float) -> GrantRequest | None:
        raw = (await self.table.entries()).get(request_id)
        request = None if raw is None else GrantRequest.from_bytes(raw)
        return None if request is None else request.settled(now)

    async def create(self, requester: Person, route: str, terms: Grant | None, reason: str, duration: float,
                     now: float) -> GrantRequest:
        """A new pending request; 400 for bad terms, 409 past ``max_pending_per_user``."""
        request = new_request(requester, route, terms, reason, duration, now, self.config.request_ttl)
        async with self._lock("user:" + requester.key):
            kept = [made for made in await self.listed(now) if made.requester.key == requester.key]
            pending = [made for made in kept if made.state == PENDING]
            if len(pending) >= self.config.max_pending_per_user:
                raise GrantRefused(409, "too-many-pending", f"You have {len(pending)} requests waiting for an "
                                                            "answer: cancel one, or wait for an answer.")
            # Every worker reads the whole table: a flood of requests and cancellations must not grow it.
            if len(kept) >= self.config.max_pending_per_user * KEPT_PER_PENDING:
                raise GrantRefused(409, "too-many-requests", "You have made too many access requests lately: "
                                                             "ask an approver or an administrator directly.")
            await self._write(request, now)
        self._event("grant.requested", request, requester.label, now)
        return request

    async def approve(self, request_id: str, approver: Person | None, terms_of: TermsOf, comment: str,
                      now: float) -> GrantRequest:
        before, after = await self._transition(
            request_id, now, lambda request: request.approve(approver, terms_of(request.route), now, comment))
        actor = ADMIN if approver is None else approver.label
        self._event("grant.approved", after, actor, now, comment=comment)
        if after.state == ACTIVE:
            metrics.grant_decided(after.route, "approved", now - before.created_at)
            self._event("grant.started", after, actor, now)
        return after

    async def deny(self, request_id: str, approver: Person | None, terms_of: TermsOf, comment: str,
                   now: float) -> GrantRequest:
        before, after = await self._transition(
            request_id, now, lambda request: request.deny(approver, terms_of(request.route), now, comment))
        metrics.grant_decided(after.route, "denied", now - before.created_at)
        self._event("grant.denied", after, ADMIN if approver is None else approver.label, now, comment=comment)
        return after

    async def cancel(self, request_id: str, requester: Person, now: float) -> GrantRequest:
        _, after = await self._transition(request_id, now, lambda request: request.cancel(requester, now))
        self._event("grant.cancelled", after, requester.label, now)
        return after

    async def revoke(self, request_id: str, approver: Person | None, terms_of: TermsOf, comment: str,
                     now: float) -> GrantRequest:
        _, after = await self._transition(
            request_id, now, lambda request: request.revoke(approver, terms_of(request.route), now, comment))
        self._event("grant.ended", after, ADMIN if approver is None else approver.label, now, comment=comment,
                    ended="revoked")
        return after

    async def settle(self, request_id: str, now: float) -> None:
        """Write down a grant that has run out, or a request left unanswered (once, whoever comes first)."""
        async with self._lock(request_id):
            raw = (await self.table.entries()).get(request_id)
            stored = None if raw is None else GrantRequest.from_bytes(raw)
            if stored is None or stored.state not in (PENDING, ACTIVE):
                return
            settled = stored.settled(now)
            if settled.state == stored.state:
                return
            await self._write(settled, now)
        if settled.state == ENDED:
            self._event("grant.ended", settled, "time", now, ended="elapsed")
        elif settled.state == EXPIRED:
            self._event("grant.expired", settled, "time", now)

    async def reload(self) -> None:
        """Read the table into the view."""
        await self.table.reload()

    async def follow(self) -> None:
        """Keep the view current, and settle what time has decided, until cancelled (an app task)."""
        await self.table.follow(unavailable_event="grants_unavailable")

    def next_due(self) -> float | None:
        return None if self.view is None else self.view.next_due()

    async def settle_due(self) -> None:
        """Write down the transitions time has made in the view's requests (the table's deadlines)."""
        if self.view is None:
            return
        now = self.view.clock()
        due = self.view.take_due(now)
        if not due:
            return
        for request_id in due:
            with contextlib.suppress(GrantRefused):  # busy: another worker is writing it down
                await self.settle(request_id, now)
        # An ended grant leaves the copy by the clock already; reading the table again tells waiters too.
        await self.table.reload()

    def _loaded(self, entries: dict[str, bytes]) -> None:
        if self.view is not None:
            self.view.replace(_requests(entries))

    async def _transition(self, request_id: str, now: float,
                          change: Callable[[GrantRequest], GrantRequest]) -> tuple[GrantRequest, GrantRequest]:
        async with self._lock(request_id):
            raw = (await self.table.entries()).get(request_id)
            stored = None if raw is None else GrantRequest.from_bytes(raw)
            if stored is None:
                raise GrantRefused(404, "not-found", "There is no such access request (ended ones are forgotten "
                                                     "after a while).")
            before = stored.settled(now)
            after = change(before)
            await self._write(after, now)
        return before, after

    async def _write(self, request: GrantRequest, now: float) -> None:
        """Store ``request`` and announce it (under its lock: the next writer reads this one's change)."""
        until = max(request.expires_at, request.ends_at or 0.0, now)
        await self.table.write(request.id, request.to_bytes(), until - now + self.config.retention)

    @contextlib.asynccontextmanager
    async def _lock(self, name: str) -> AsyncIterator[None]:
        key = "grants:lock:" + name.replace("\x00", ":")
        deadline = time.monotonic() + LOCK_WAIT
        while not await self.store.put(key, b"1", LOCK_TTL, only_new=True):
            if time.monotonic() > deadline:
                raise GrantRefused(409, "busy", "Someone else is changing this request right now: try again.")
            await asyncio.sleep(0.02)
        try:
            yield
        finally:
            await self.store.delete(key)

    def _event(self, event: str, request: GrantRequest, actor: str, now: float, **fields: object) -> None:
        _log.info(event.replace(".", "_"), actor=actor, subject=request.subject, requester=request.requester_label,
                  route=request.route, reason=request.reason, duration=round(request.duration), grant=request.id,
                  state=request.state_at(now), approvals=len(request.approvals),
                  ends_at=None if request.ends_at is None else int(request.ends_at), **fields)
        metrics.grant_event(request.route, event.removeprefix("grant."))
        if self._notify is not None:
            self._notify(event, request, now)


def _requests(entries: dict[str, bytes]) -> list[GrantRequest]:
    """The requests of the table's entries, oldest first; unreadable ones skipped."""
    found = (GrantRequest.from_bytes(value) for value in entries.values())
    return sorted((request for request in found if request is not None),
                  key=lambda request: (request.created_at, request.id))


def _ignored(entries: dict[str, bytes]) -> None:
    """A registry without a view keeps no copy."""

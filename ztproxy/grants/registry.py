"""The access requests in the session store: the authority every worker and replica reads.

Requests are entries of the store's table :data:`TABLE` (by id, a JSON record, no secrets),
kept while they are pending or active and :attr:`GrantsConfig.retention` after, so they
survive restarts, reloads and the loss of any proxy. Each change is made under a short lock
in the store (one writer per request: two approvers on two replicas never both count, an
approval and a denial never both land), then a new generation is written under
:data:`GENERATION_KEY` and announced on :data:`CHANNEL`, which makes every worker read the
table again (:mod:`ztproxy.grants.view`). Time-driven transitions (a grant's end, an
unanswered request's expiry) are written down by whichever worker settles them first; the
lock and a re-read make that, and its event, happen once.

Every step is a structured event (``grant_requested``, ``grant_approved``...) with the actor,
the subject, the route, the reason, the duration and the request id, counted in metrics, and
handed to the webhooks (:mod:`ztproxy.grants.webhooks`), which never hold the caller up.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import orjson
import structlog

from ztproxy import metrics
from ztproxy.config.grants import GrantsConfig
from ztproxy.errors import SessionStoreUnavailable
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
from ztproxy.policy.criteria.grant import Grant
from ztproxy.sessions.store import SessionStore

TABLE = "grants"
GENERATION_KEY = "grants:generation"
CHANNEL = "ztproxy:grants"
LOCK_TTL = 5.0  # a lock its holder never released (a crash) frees itself then
LOCK_WAIT = 3.0  # how long a change waits for another one on the same request
GENERATION_TTL = 30 * 86400.0
KEPT_PER_PENDING = 10  # a user's requests kept (ended ones included) at most, per max_pending_per_user

_log = structlog.get_logger("ztproxy.grants")

Notify = Callable[[str, GrantRequest, float], None]  # event name ("grant.approved"), the request, now
TermsOf = Callable[[str], Grant | None]  # a route's grant terms, in the configuration in force


class GrantRegistry:
    """Requests and their transitions, in the store (see the module docstring)."""

    def __init__(self, store: SessionStore, config: GrantsConfig, *, notify: Notify | None = None,
                 after_change: Callable[[], Awaitable[None]] | None = None) -> None:
        self.store = store
        self.config = config
        self._notify = notify
        self.after_change = after_change  # e.g. this worker's view reads the change at once

    async def stored(self) -> list[GrantRequest]:
        """Every request kept, oldest first, as written (time-driven transitions not applied)."""
        found = (GrantRequest.from_bytes(value) for value in (await self.store.entries(TABLE)).values())
        return sorted((request for request in found if request is not None),
                      key=lambda request: (request.created_at, request.id))

    async def listed(self, now: float) -> list[GrantRequest]:
        """Every request kept, oldest first, each in its state at ``now``."""
        return [request.settled(now) for request in await self.stored()]

    async def get(self, request_id: str, now: float) -> GrantRequest | None:
        raw = (await self.store.entries(TABLE)).get(request_id)
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
        await self._changed(request)
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
            raw = (await self.store.entries(TABLE)).get(request_id)
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
        await self._changed(settled)

    async def _transition(self, request_id: str, now: float,
                          change: Callable[[GrantRequest], GrantRequest]) -> tuple[GrantRequest, GrantRequest]:
        async with self._lock(request_id):
            raw = (await self.store.entries(TABLE)).get(request_id)
            stored = None if raw is None else GrantRequest.from_bytes(raw)
            if stored is None:
                raise GrantRefused(404, "not-found", "There is no such access request (ended ones are forgotten "
                                                     "after a while).")
            before = stored.settled(now)
            after = change(before)
            await self._write(after, now)
        await self._changed(after)
        return before, after

    async def _write(self, request: GrantRequest, now: float) -> None:
        until = max(request.expires_at, request.ends_at or 0.0, now)
        await self.store.put_entry(TABLE, request.id, request.to_bytes(), until - now + self.config.retention)

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

    async def _changed(self, request: GrantRequest) -> None:
        await self.store.put(GENERATION_KEY, os.urandom(16), GENERATION_TTL)
        try:
            await self.store.publish(CHANNEL, orjson.dumps({"id": request.id, "t": int(time.time() * 1000)}))
        except SessionStoreUnavailable:
            # Stored all the same: the other workers read the new generation within their cache_ttl.
            _log.warning("grant_change_not_announced", grant=request.id)
        if self.after_change is not None:
            await self.after_change()

    def _event(self, event: str, request: GrantRequest, actor: str, now: float, **fields: object) -> None:
        _log.info(event.replace(".", "_"), actor=actor, subject=request.subject, requester=request.requester_label,
                  route=request.route, reason=request.reason, duration=round(request.duration), grant=request.id,
                  state=request.state_at(now), approvals=len(request.approvals),
                  ends_at=None if request.ends_at is None else int(request.ends_at), **fields)
        metrics.grant_event(request.route, event.removeprefix("grant."))
        if self._notify is not None:
            self._notify(event, request, now)

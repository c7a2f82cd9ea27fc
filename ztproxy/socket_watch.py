"""What ends an open WebSocket: continuous verification of a request that lasts for hours.

An HTTP request is judged once; a socket stays open, so :class:`SocketWatch` keeps judging
it and says, once, why it must close (its ``over``, the close reason the client reads):

- ``session ended``: the session that opened it was revoked here or on any other worker or
  replica (``SessionManager.watch``), or the IdP refused its refresh, or it outlived
  ``sessions.lifetime``;
- ``access ended``: the grant that let it in ended (``GrantsView.until_ended``);
- ``access withdrawn``: the route's policy would refuse it now: a security signal's effect
  (MFA taken away, claims changed, the device not compliant: ``ztproxy.signals.effects``),
  groups that changed at a refresh, a session locked by session risk;
- ``access revoked`` / ``credential expired``: a service's client, workload or token was
  revoked (``ztproxy.service_revocations``), or its token's ``exp`` or certificate's
  notAfter passed.

Revocations, grant ends and signals arrive as events (within the same bounds as for
requests). The rest is found by opening the socket's session again, as a request would
(loaded, re-verified at the IdP when ``refresh_interval`` is due, signals' effects applied),
every ``sessions.cache_ttl`` (at least :data:`MIN_RECHECK`): a socket is the session's
activity, so this also keeps it from idling out while the socket is used. When the session
store cannot be reached the socket keeps its last verdict (requests fail closed meanwhile);
dropping every socket at a Redis blip would be an outage of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from aiohttp import web

from ztproxy.auth import AUTH, Auth
from ztproxy.errors import SessionStoreUnavailable
from ztproxy.facts import still_allowed
from ztproxy.grants.model import person_key
from ztproxy.grants.service import GRANTS
from ztproxy.policy.criteria.grant import Grant
from ztproxy.service_revocations import REVOKED_SERVICES
from ztproxy.sessions.model import Session
from ztproxy.state import Person, RequestRecord, ServiceCaller

MIN_RECHECK = 1.0  # seconds between two openings of a socket's session, at least


class SocketWatch:
    """Watches one socket's request from ``start`` to ``stop``; ``closed`` is set with ``over``."""

    def __init__(self, request: web.Request, record: RequestRecord) -> None:
        self._request = request
        self._record = record
        self.closed = asyncio.Event()
        self.over = b""
        self._stops: list[Callable[[], None]] = []
        self._tasks: list[asyncio.Task[None]] = []

    def _close(self, over: bytes) -> None:
        if not self.closed.is_set():
            self.over = over
            self.closed.set()

    def start(self) -> None:
        caller = self._record.caller
        if isinstance(caller, ServiceCaller):
            self._watch_service(caller)
        elif isinstance(caller, Person) and (auth := self._request.app.get(AUTH)) is not None:
            self._watch_person(auth, caller)

    async def stop(self) -> None:
        for stop in self._stops:
            stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # --- people ---------------------------------------------------------------------------

    def _granted(self, caller: Person, now: float) -> bool:
        grants, route = self._request.app[GRANTS], self._record.context.route
        return grants is not None and route.grant is not None and grants.view.holds(
            person_key(caller.session.provider, caller.subject), route.name, now)

    def _judge(self, auth: Auth, caller: Person, session: Session, now: float) -> None:
        """Withdraw the socket when the route's policy would refuse it now, ``session`` as it is now."""
        adjusted, _ = auth.effects.adjust(session)
        device = None if self._record.device is None else auth.effects.device(self._record.device)
        risk = adjusted.risk
        locked = risk is not None and risk.locked_until is not None and now < risk.locked_until
        if locked or not still_allowed(self._record, adjusted.identity, device,
                                       granted=self._granted(caller, now)):
            self._close(b"access withdrawn")

    def _watch_grant(self, caller: Person) -> None:
        grants, decision, route = self._request.app[GRANTS], self._record.decision, self._record.context.route
        if grants is None or route.grant is None or decision is None or Grant.name not in decision.reasons:
            return  # not let in by a grant (another rule held): nothing of a grant to watch

        async def watch() -> None:
            await grants.view.until_ended(person_key(caller.session.provider, caller.subject), route.name)
            self._close(b"access ended")

        self._tasks.append(asyncio.create_task(watch()))

    def _watch_person(self, auth: Auth, caller: Person) -> None:
        session = caller.session  # as the store said last: each recheck replaces it
        every = max(float(auth.sessions.config.cache_ttl), MIN_RECHECK)

        async def recheck() -> None:
            nonlocal session
            while not self.closed.is_set():
                await asyncio.sleep(every)
                now = time.time()
                with contextlib.suppress(SessionStoreUnavailable):  # the store away: keep the last verdict
                    fresh = await auth.sessions.load(caller.ticket, now)
                    if fresh is not None and auth.refresher.due(fresh, now):
                        fresh = await auth.refresher.refresh(caller.ticket, fresh, now)
                    if fresh is None:
                        self._close(b"session ended")
                    else:
                        session = fresh
                        self._judge(auth, caller, session, now)

        self._stops.append(auth.sessions.watch(caller.ticket.store_key, lambda: self._close(b"session ended")))
        self._stops.append(auth.effects.listen(lambda: self._judge(auth, caller, session, time.time())))
        self._watch_grant(caller)
        self._tasks.append(asyncio.create_task(recheck()))

    # --- services -------------------------------------------------------------------------

    def _watch_service(self, caller: ServiceCaller) -> None:
        if caller.ends is not None:
            timer = asyncio.get_running_loop().call_later(max(0.0, caller.ends - time.time()),
                                                          self._close, b"credential expired")
            self._stops.append(timer.cancel)
        revoked = self._request.app[REVOKED_SERVICES]
        if revoked is not None:
            def judge() -> None:
                if revoked.refusal(caller.service, time.time()) is not None:
                    self._close(b"access revoked")
            self._stops.append(revoked.listen(judge))

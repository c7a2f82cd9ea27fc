"""ztproxy as a Shared Signals transmitter: the apps behind it hear that a session ended.

When ztproxy ends sessions on purpose (sign-out, an administrator, a security event, session
risk, the IdP's logout or a refused refresh: ``SessionManager.on_end``), each receiver in
``signals.receivers`` gets, per ended session, a CAEP ``session-revoked`` Security Event
Token (RFC 8417, ``typ: secevent+jwt``) signed with the assertion key, so an app verifies it
with ``/.well-known/ztproxy/jwks.json`` exactly as it verifies assertions: ``iss`` is the
public URL, ``aud`` the receiver's route's audience, and the subject is complex (SSF 1.0):
``user`` is the assertion's ``iss`` and ``sub`` (``iss_sub``; ``email`` when only the email
is known), ``session`` the ``sid`` the route's assertions carry (``opaque``).

Delivery is a push (RFC 8935), off the request path: endings only append to a bounded queue
of this process (when full, the oldest waiting SET is dropped and counted); a task sends
them, a few at a time, each retried with exponential backoff while its receiver is down or
answers 5xx or 429, and given up after :data:`MAX_ATTEMPTS`. A 400 (the receiver refused the
SET, with its ``err``) and other answers are final. Every outcome is logged and counted in
``ztproxy_signals_sent_total{receiver, result}``.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import secrets
import time
from collections.abc import AsyncIterator, Callable, Collection, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import structlog
from joserfc import jwt

from ztproxy import metrics
from ztproxy.assertion.keys import ALGORITHM, KeyRing
from ztproxy.assertion.signer import sid_for
from ztproxy.config.schema import Config
from ztproxy.config.signals import ReceiverConfig
from ztproxy.context import route_origin
from ztproxy.sessions.manager import Ending, SessionManager
from ztproxy.sessions.sealing import public_handle
from ztproxy.signals.events import SESSION_REVOKED

MAX_PENDING = 10_000  # SETs waiting in this process, all receivers together
MAX_ATTEMPTS = 8  # then the SET is given up (about four minutes of backoff)
FIRST_RETRY = 1.0  # seconds; doubled at each attempt
LAST_RETRY = 60.0
IN_FLIGHT = 8  # pushes at once
_MAX_ANSWER = 4096  # bytes of a refusal's body kept for the log

_log = structlog.get_logger("ztproxy.signals")


def session_revoked(*, issuer: str, audience: str, route: str, handle: str, ending: Ending, now: float,
                    key: Any, kid: str) -> str:
    """The CAEP session-revoked SET for one ended session (``handle``: its public handle)."""
    session = {"format": "opaque", "id": sid_for(handle, route)}
    subject: dict[str, Any] = {"format": "complex", "session": session}
    if ending.subject is not None:
        subject["user"] = {"format": "iss_sub", "iss": issuer, "sub": ending.subject}
    elif ending.email is not None:
        subject["user"] = {"format": "email", "email": ending.email}
    event = {"event_timestamp": int(now), "initiating_entity": ending.initiator, "reason_admin": {"en": ending.reason}}
    # RFC 8417 2.2: no exp; iat and a unique jti. SSF 1.0: the subject in sub_id.
    claims = {"iss": issuer, "aud": audience, "iat": int(now), "jti": secrets.token_urlsafe(16), "sub_id": subject,
              "events": {SESSION_REVOKED: event}}
    return jwt.encode({"alg": ALGORITHM, "kid": kid, "typ": "secevent+jwt"}, claims, key, algorithms=[ALGORITHM])


@dataclass(order=True)
class _Pending:
    due: float  # monotonic
    order: int
    receiver: ReceiverConfig = field(compare=False)
    handle: str = field(compare=False)
    ending: Ending = field(compare=False)
    ended_at: float = field(compare=False)  # wall clock
    token: str | None = field(default=None, compare=False)  # signed at the first attempt, then resent as it is
    attempts: int = field(default=0, compare=False)


class Outbox:
    """This process's queue of SETs to push, and the task that pushes them."""

    def __init__(self, receivers: Collection[ReceiverConfig], audiences: Mapping[str, str], issuer: str,
                 keyring: Callable[[], KeyRing], http: aiohttp.ClientSession) -> None:
        self.receivers = tuple(r for r in receivers if "session-revoked" in r.events)
        self._audiences = audiences  # by route name
        self._issuer = issuer
        self._keyring = keyring  # read when signing: the app's key ring, rotated as the assertions' is
        self._http = http
        self._queue: list[_Pending] = []  # a heap, soonest due first
        self._order = itertools.count()
        self._wake = asyncio.Event()

    def ended(self, keys: Collection[str], ending: Ending) -> None:
        """``SessionManager.on_end``: queue one SET per ended session and receiver; never waits."""
        now, wall = time.monotonic(), time.time()
        for key in keys:
            for receiver in self.receivers:
                if len(self._queue) >= MAX_PENDING:
                    dropped = min(self._queue, key=lambda pending: pending.order)  # the oldest waiting
                    self._queue.remove(dropped)
                    heapq.heapify(self._queue)
                    metrics.signal_sent(dropped.receiver.name, "dropped")
                    _log.warning("ssf_set_dropped", receiver=dropped.receiver.name, reason="queue full")
                heapq.heappush(self._queue, _Pending(now, next(self._order), receiver, public_handle(key), ending,
                                                     wall))
        self._wake.set()

    async def run(self) -> None:
        """Push what is due, until cancelled (a task for the app's lifetime)."""
        slots = asyncio.Semaphore(IN_FLIGHT)
        pushing: set[asyncio.Task[None]] = set()
        try:
            while True:
                self._wake.clear()
                now = time.monotonic()
                while self._queue and self._queue[0].due <= now:
                    pending = heapq.heappop(self._queue)
                    await slots.acquire()
                    task = asyncio.create_task(self._push(pending))
                    pushing.add(task)
                    task.add_done_callback(pushing.discard)
                    task.add_done_callback(lambda _: slots.release())
                wait = self._queue[0].due - now if self._queue else None
                try:
                    async with asyncio.timeout(wait):
                        await self._wake.wait()
                except TimeoutError:
                    pass
        finally:
            for task in pushing:
                task.cancel()
            await asyncio.gather(*pushing, return_exceptions=True)

    async def _push(self, pending: _Pending) -> None:
        receiver = pending.receiver
        if pending.token is None:
            key = self._keyring().signing_key(time.time())
            pending.token = session_revoked(issuer=self._issuer, audience=self._audiences[receiver.route],
                                            route=receiver.route, handle=pending.handle, ending=pending.ending,
                                            now=pending.ended_at, key=key.key, kid=key.kid)
        pending.attempts += 1
        headers = {"Content-Type": "application/secevent+jwt", "Accept": "application/json"}
        if receiver.authorization_header:
            headers["Authorization"] = receiver.authorization_header
        try:
            async with self._http.post(receiver.url, data=pending.token, headers=headers, allow_redirects=False,
                                       timeout=aiohttp.ClientTimeout(total=receiver.http_timeout)) as response:
                status = response.status
                answer = (await response.content.read(_MAX_ANSWER)).decode("utf-8", errors="replace")
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            status, answer = 0, str(exc) or type(exc).__name__
        if status in (200, 202):  # RFC 8935 2.2: 202 Accepted (200 tolerated)
            metrics.signal_sent(receiver.name, "delivered")
            _log.info("ssf_set_delivered", receiver=receiver.name, route=receiver.route,
                      session=pending.handle, attempts=pending.attempts)
            return
        if (status == 0 or status == 429 or status >= 500) and pending.attempts < MAX_ATTEMPTS:
            delay = min(LAST_RETRY, FIRST_RETRY * 2 ** (pending.attempts - 1))
            pending.due = time.monotonic() + delay
            heapq.heappush(self._queue, pending)
            self._wake.set()
            metrics.signal_sent(receiver.name, "retried")
            _log.warning("ssf_set_retry", receiver=receiver.name, status=status, answer=answer[:200],
                         attempts=pending.attempts, retry_in=delay)
            return
        result = "rejected" if status == 400 else "failed"
        metrics.signal_sent(receiver.name, result)
        _log.warning("ssf_set_" + result, receiver=receiver.name, status=status, answer=answer[:200],
                     attempts=pending.attempts, session=pending.handle)


def audiences(config: Config) -> dict[str, str]:
    """Each route's assertion audience: configured, else its origin (as ``ztproxy.context`` has it)."""
    return {route.name: route.audience or route_origin(config.public_url, route.host) for route in config.routes}


@asynccontextmanager
async def transmitting(config: Config, sessions: SessionManager, keyring: Callable[[], KeyRing]) -> AsyncIterator[None]:
    """Push session-revoked SETs for the endings ``sessions`` makes, while in the block (none without receivers)."""
    receivers = config.signals.receivers
    if not receivers:
        yield
        return
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(), trust_env=False,
                                     headers={"User-Agent": "ztproxy"}) as http:
        outbox = Outbox(receivers, audiences(config), config.public_url, keyring, http)
        sessions.on_end.append(outbox.ended)
        running = asyncio.create_task(outbox.run())
        try:
            yield
        finally:
            sessions.on_end.remove(outbox.ended)
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)

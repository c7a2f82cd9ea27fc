"""The risk service the stages share: judges a session's request, and acts on what the engine says.

Built per app in ``risk_ctx`` (``RISK``; None without sign-in or with ``risk.enabled: false``).
Judging is pure and in memory (:mod:`ztproxy.risk`); acting is where I/O happens, and only
when something changed: a session's new state (a move, its first device, a signal, a lock) is
written to the session store like any other session data, so every replica sees it within
``sessions.cache_ttl``; a revocation goes through the session manager (store, then the
revocation channel). Denials are counted per worker; sign-ins per address in the store,
under a keyed hash of the address (the store never holds an address).

Containment flows outward: a revocation is an ending with its reason (``Ending``), which the
security-signals transmitter pushes to the apps that subscribe as a CAEP ``session-revoked``
(``ztproxy.signals.outbox``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import secrets
from collections.abc import AsyncIterator

import structlog
from aiohttp import web

from ztproxy import metrics
from ztproxy.auth import AUTH
from ztproxy.config.risk import RiskConfig
from ztproxy.context import CompiledRoute, RequestContext
from ztproxy.errors import AccessDenied, SessionStoreUnavailable
from ztproxy.policy.model import Device
from ztproxy.policy.reasons import SESSION_LOCKED
from ztproxy.risk import RiskRules, RiskState, Verdict, judge, judge_denial, network_of
from ztproxy.risk.bursts import Bursts
from ztproxy.risk.engine import LOCK, REVOKE, needs_mfa, route_rules
from ztproxy.risk.signals import SIGN_IN_BURST
from ztproxy.risk.words import sentence
from ztproxy.risk_seen import seen_in
from ztproxy.sessions.manager import Ending, SessionManager
from ztproxy.sessions.model import Session
from ztproxy.sessions.sealing import Ticket, parse_secret
from ztproxy.sessions.store import SessionStore
from ztproxy.state import CONFIG, ROUTE_LIST

_log = structlog.get_logger("ztproxy.risk")


class RiskService:
    def __init__(self, config: RiskConfig, sessions: SessionManager, store: SessionStore,
                 routes: tuple[CompiledRoute, ...], secret: bytes) -> None:
        self.config = config
        self.sessions = sessions
        self.store = store
        self._rules = {route.name: route_rules(config, route.config.risk, needs_mfa(route.policy)) for route in routes}
        self._default_rules = route_rules(config, {}, needs_mfa=False)
        self._secret = secret
        self._denials = Bursts()

    def rules_for(self, route: str) -> RiskRules:
        return self._rules.get(route, self._default_rules)

    def judge(self, ctx: RequestContext, session: Session, user_agent: str | None, device: Device | None,
              now: float) -> Verdict:
        """The request's verdict; ``changed`` when the session's risk state must be written."""
        seen = seen_in(ctx.client_ip, user_agent, device)
        rules = self.rules_for(ctx.route.name)
        if session.risk is None:  # a session from before risk was on: this request is its context
            return dataclasses.replace(judge(RiskState.at_sign_in(seen), seen, now, rules), changed=True)
        return judge(session.risk, seen, now, rules)

    async def act(self, ticket: Ticket, session: Session, verdict: Verdict, route: str, now: float) -> None:
        """Report this request's signals, then revoke, or write the session's new state."""
        state = verdict.state
        for noted in verdict.detected:
            metrics.risk_signal(noted.signal, noted.action)
            _log.warning("risk_signal", signal=noted.signal, action=noted.action, route=route,
                         session=ticket.public_id, subject=session.subject, level=verdict.level,
                         network=state.network, previous_network=state.previous_network,
                         signed_in_from=state.signed_in_from, browser=str(state.browser))
        for found in verdict.delays:
            if found.delay is not None:
                metrics.risk_detected(found.signal, found.delay)
        if verdict.action == REVOKE and any(noted.action == REVOKE for noted in verdict.detected):
            await self.revoke(ticket, session, verdict.signal or "")
        elif verdict.changed:
            await self.sessions.update(ticket, session.replace(risk=state), now)

    async def revoke(self, ticket: Ticket, session: Session, signal: str) -> None:
        """End the session on every replica (and the user's others with ``revoke_all_sessions``)."""
        # Apps that subscribe hear of it as a CAEP session-revoked (ztproxy.signals.outbox).
        ending = Ending("policy", f"session risk: {signal}", session.provider, session.subject, session.email)
        await self.sessions.end(ticket, ending)
        ended = 1
        if self.config.revoke_all_sessions:
            ended += await self.sessions.end_matching(session.provider, subject=session.subject, ending=ending)
        metrics.session_ended("risk", ended)
        _log.warning("session_ended", reason="risk", signal=signal, subject=session.subject,
                     session=ticket.public_id, all_sessions=self.config.revoke_all_sessions)

    def note_denial(self, ticket: Ticket, session: Session, state: RiskState | None, route: str,
                    now: float) -> Verdict | None:
        """Count a 403 for this session; on the ``count``-th within the window, the burst's verdict.

        What it leads to (a lock, a revocation, a noted signal) is written in the background.
        """
        burst = self.config.denials
        if state is None or not self._denials.add(ticket.store_key, now, burst.window, burst.count):
            return None
        rules = self.rules_for(route)
        verdict = judge_denial(state, now, rules)
        verdict = dataclasses.replace(verdict, changed=True)
        self.sessions.spawn(self._act_later(ticket, session, verdict, route, now))
        return verdict

    async def _act_later(self, ticket: Ticket, session: Session, verdict: Verdict, route: str, now: float) -> None:
        # Off the request's path nobody answers with a 503: a store that is away is logged, not
        # raised (an unretrieved task error was logged with its traceback, at each denial burst
        # of an outage, and the formatting cached the source of every file in it for good).
        try:
            await self.act(ticket, session, verdict, route, now)
        except SessionStoreUnavailable:
            _log.warning("risk_state_not_written", session=ticket.public_id, route=route, signal=verdict.signal)

    async def admit_sign_in(self, client_ip: str, now: float) -> None:
        """Count a sign-in started from this address; refuse it while the address is locked."""
        burst = self.config.sign_ins
        key = hmac.new(self._secret, f"sign-in\0{client_ip}".encode(), hashlib.sha256).hexdigest()
        refusal = AccessDenied(sentence(SIGN_IN_BURST, LOCK), reasons=(SESSION_LOCKED,))
        if await self.store.get("risk:sign-in-lock:" + key) is not None:
            raise refusal
        count = await self.store.increment("risk:sign-ins:" + key, burst.window)
        if count != burst.count:
            return
        action = self.config.action("sign-in-burst")
        metrics.risk_signal(SIGN_IN_BURST, action)
        _log.warning("risk_signal", signal=SIGN_IN_BURST, action=action, network=network_of(client_ip),
                     count=count, window=burst.window)
        if action == LOCK:
            await self.store.put("risk:sign-in-lock:" + key, b"1", burst.lock)
            raise refusal



RISK = web.AppKey[RiskService | None]("risk")


async def risk_ctx(app: web.Application) -> AsyncIterator[None]:
    """After ``auth_ctx``: the risk service of the app's sign-ins, or None."""
    config = app[CONFIG]
    auth = app[AUTH]
    if auth is None or not config.risk.enabled:
        app[RISK] = None
        yield
        return
    cookie_secrets = config.sessions.cookie_secrets
    secret = parse_secret(cookie_secrets[0]) if cookie_secrets else secrets.token_bytes(32)
    # Its background writes belong to the session manager, which auth_ctx closes.
    app[RISK] = RiskService(config.risk, auth.sessions, auth.sessions.store, app[ROUTE_LIST], secret)
    yield

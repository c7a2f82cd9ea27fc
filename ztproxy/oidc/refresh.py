"""Continuous verification: re-check each session's user at the IdP every ``refresh_interval``.

The refresh token is redeemed and userinfo (and the preset's groups source, such as
Microsoft Graph) read again: new groups apply at once, and a
refresh the IdP refuses (account disabled, grant revoked) ends the session. When the IdP
cannot be reached the session keeps working and the refresh is retried after a pause,
so an IdP outage does not lock out everyone who is already signed in. One refresh per
session at a time: in this worker through a shared task, across workers and replicas
through a short lock in the store (IdPs that rotate refresh tokens treat a second use of
the old one as theft and revoke the whole grant).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping

import structlog

from ztproxy import metrics
from ztproxy.errors import IdentityProviderUnavailable, SessionStoreUnavailable
from ztproxy.oidc.claims import session_refreshed
from ztproxy.oidc.provider import Provider, RefreshRejected, TokenRefused
from ztproxy.sessions.manager import Ending, SessionManager
from ztproxy.sessions.model import Session
from ztproxy.sessions.sealing import Ticket

_log = structlog.get_logger("ztproxy.refresh")

RETRY_AFTER_FAILURE = 30.0


class Refresher:
    def __init__(self, providers: Mapping[str, Provider], sessions: SessionManager, interval: float) -> None:
        self.providers = providers
        self.sessions = sessions
        self.interval = interval
        self._inflight: dict[str, asyncio.Task[Session | None]] = {}
        self._retry_after: dict[str, float] = {}

    def due(self, session: Session, now: float) -> bool:
        return now - session.refreshed >= self.interval

    async def refresh(self, ticket: Ticket, session: Session, now: float) -> Session | None:
        """The session, refreshed if due and possible; None when the IdP ended it."""
        key = ticket.store_key
        if now < self._retry_after.get(key, 0.0):
            return session
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.ensure_future(self._refresh(ticket, session, now))
            self._inflight[key] = task
            task.add_done_callback(lambda _: self._inflight.pop(key, None))
        # Shielded: a client that leaves must not cancel the refresh other requests wait on.
        return await asyncio.shield(task)

    async def _refresh(self, ticket: Ticket, session: Session, now: float) -> Session | None:
        provider = self.providers.get(session.provider)
        if provider is None or session.refresh_token is None:
            # Nothing to re-verify the user with: the session ends, and a new sign-in (often
            # silent, while the IdP session lasts) starts a verifiable one.
            await self._end(ticket, session, "no-refresh-token" if provider else "provider-removed")
            return None
        lock = "lock:refresh:" + ticket.store_key
        # Long enough for one refresh (token + userinfo calls); a lock left by a worker that died
        # or lost the store mid-refresh delays the next re-check by at most this much.
        if not await self.sessions.store.put(lock, b"", provider.config.http_timeout + 1, only_new=True):
            return session  # another worker or replica is on it
        store_failed = False
        try:
            # Our copy may predate a refresh another worker finished: redeeming its spent
            # refresh token again would look like token theft to the IdP.
            current = await self.sessions.load(ticket, now, fresh=True)
            if current is None or not self.due(current, now):
                return current
            session = current
            assert session.refresh_token is not None
            try:
                tokens = await provider.refresh(session.refresh_token)
                userinfo = {}
                if provider.config.use_userinfo and tokens.access_token:
                    userinfo = await provider.userinfo(tokens.access_token)
                groups = await provider.groups(tokens.access_token, None)
            except (RefreshRejected, TokenRefused) as exc:
                await self._end(ticket, session, "refresh-rejected", error=str(exc))
                return None
            except IdentityProviderUnavailable:
                self._retry_after[ticket.store_key] = now + RETRY_AFTER_FAILURE
                self._prune(now)
                _log.warning("session_refresh_deferred", subject=session.subject, session=ticket.public_id)
                return session
            # OIDC Core 5.3.2: userinfo must describe the same subject.
            if userinfo and userinfo.get("sub") != session.subject:
                await self._end(ticket, session, "subject-changed")
                return None
            refreshed = session_refreshed(provider.config, session, userinfo, tokens, now, groups=groups)
            if not await self.sessions.update(ticket, refreshed, now):
                return None  # ended while we were asking
            if refreshed.groups != session.groups:
                _log.info("session_groups_changed", subject=session.subject, session=ticket.public_id,
                          added=sorted(set(refreshed.groups) - set(session.groups)),
                          removed=sorted(set(session.groups) - set(refreshed.groups)))
            return refreshed
        except SessionStoreUnavailable:
            store_failed = True
            raise
        finally:
            if not store_failed:  # else the delete would wait out the store timeout a second time
                with contextlib.suppress(SessionStoreUnavailable):
                    await self.sessions.store.delete(lock)

    async def _end(self, ticket: Ticket, session: Session, reason: str, **fields: str) -> None:
        await self.sessions.end(ticket, Ending("system", f"the identity provider refused a refresh ({reason})",
                                               session.provider, session.subject, session.email))
        _log.info("session_ended", reason=reason, subject=session.subject, session=ticket.public_id, **fields)
        metrics.session_ended(reason)

    def _prune(self, now: float) -> None:
        if len(self._retry_after) > 10_000:
            for key in [k for k, until in self._retry_after.items() if until <= now]:
                del self._retry_after[key]

"""The session life cycle: start, load (through a short in-process cache), touch, replace, end.

A session is stored sealed under its hashed id (``sealing``), with a store expiry that
is the idle timeout, capped by what is left of its absolute lifetime: the store forgets
an idle session by itself, and a use extends it (``touch``, which never recreates a
session that was ended meanwhile). Each worker keeps what it read for ``cache_ttl``
seconds, so the hot path does not pay a store round trip per request; an ending in this
process drops the entry at once, elsewhere within ``cache_ttl``.
No aiohttp; ``now`` is always a parameter.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from ztproxy.config.sessions import SessionsConfig
from ztproxy.sessions.model import Session
from ztproxy.sessions.sealing import Ticket, seal, unseal
from ztproxy.sessions.store import SessionStore

DEFAULT_CACHE_SIZE = 100_000


def user_index(provider: str, subject: str) -> str:
    return "idx:user:" + hashlib.sha256(f"{provider}\0{subject}".encode()).hexdigest()


def idp_session_index(provider: str, idp_session: str) -> str:
    return "idx:sid:" + hashlib.sha256(f"{provider}\0{idp_session}".encode()).hexdigest()


def _indexes(session: Session) -> list[str]:
    indexes = [user_index(session.provider, session.subject)]
    if session.idp_session:
        indexes.append(idp_session_index(session.provider, session.idp_session))
    return indexes


@dataclass(slots=True)
class _Cached:
    key: bytes  # the ticket's key: a cookie with the same id but another key must not match
    session: Session
    read_at: float
    touched_at: float


class SessionManager:
    def __init__(self, store: SessionStore, config: SessionsConfig, *, cache_size: int = DEFAULT_CACHE_SIZE) -> None:
        self.store = store
        self.config = config
        self._cache: dict[str, _Cached] = {}
        self._cache_size = cache_size
        # Extend the store expiry at most this often per session and worker.
        self._touch_every = min(config.idle_timeout / 8, 60.0)

    def _expiry(self, session: Session, now: float) -> float:
        return min(self.config.idle_timeout, session.created + self.config.lifetime - now)

    def live(self, session: Session, now: float) -> bool:
        return now < session.created + self.config.lifetime

    async def load(self, ticket: Ticket, now: float, *, fresh: bool = False) -> Session | None:
        """The session this cookie opens, or None (unknown, ended, expired, tampered).

        ``fresh`` reads the store even when this worker's copy is recent.
        """
        key = ticket.store_key
        cached = self._cache.get(key)
        if cached is not None and not fresh and now - cached.read_at < self.config.cache_ttl:
            if hmac.compare_digest(cached.key, ticket.key) and self.live(cached.session, now):
                return cached.session
            return None
        sealed = await self.store.get(key)
        if sealed is None:
            self._cache.pop(key, None)
            return None
        plain = unseal(ticket, sealed)
        session = Session.from_bytes(plain) if plain is not None else None
        if session is None or not self.live(session, now):
            # Foreign or tampered bytes are left alone (the right cookie may still open them);
            # an expired session is removed.
            if session is not None:
                await self.end(ticket, session)
            return None
        touched_at = cached.touched_at if cached is not None else now
        if now - touched_at >= self._touch_every:
            await self.store.touch(key, self._expiry(session, now), indexes=_indexes(session))
            touched_at = now
        self._remember(key, _Cached(ticket.key, session, now, touched_at))
        return session

    async def start(self, session: Session, now: float, *, replacing: Ticket | None = None) -> Ticket:
        """Store a new session under a fresh id (OWASP: rotate the id at every sign-in)."""
        if replacing is not None:
            await self.end(replacing)
        ticket = Ticket.new()
        await self.store.put(ticket.store_key, seal(ticket, session.to_bytes()), self._expiry(session, now),
                             indexes=_indexes(session))
        self._remember(ticket.store_key, _Cached(ticket.key, session, now, now))
        return ticket

    async def update(self, ticket: Ticket, session: Session, now: float) -> bool:
        """Replace the session's content (an identity refresh); False when it was ended meanwhile."""
        written = await self.store.put(ticket.store_key, seal(ticket, session.to_bytes()),
                                       self._expiry(session, now), only_existing=True, indexes=_indexes(session))
        if written:
            self._remember(ticket.store_key, _Cached(ticket.key, session, now, now))
        else:
            self._cache.pop(ticket.store_key, None)
        return written

    async def end(self, ticket: Ticket, session: Session | None = None) -> None:
        self._cache.pop(ticket.store_key, None)
        await self.store.delete(ticket.store_key)

    async def end_matching(self, provider: str, *, subject: str | None = None,
                           idp_session: str | None = None) -> int:
        """End every session of a user, or of one IdP session (back-channel logout)."""
        keys: set[str] = set()
        if idp_session is not None:
            keys.update(await self.store.members(idp_session_index(provider, idp_session)))
        elif subject is not None:
            keys.update(await self.store.members(user_index(provider, subject)))
        for key in keys:
            self.forget(key)
        if keys:
            await self.store.delete(*keys)
        return len(keys)

    def forget(self, store_key: str) -> None:
        """Drop this worker's copy (after a revocation seen elsewhere)."""
        self._cache.pop(store_key, None)

    def _remember(self, key: str, entry: _Cached) -> None:
        cache = self._cache
        if key not in cache and len(cache) >= self._cache_size:
            del cache[next(iter(cache))]  # the oldest insertion
        cache[key] = entry

"""The session life cycle: start, load (through a short in-process cache), touch, replace, end.

A session is stored sealed under its hashed id (``sealing``), with a store expiry that
is the idle timeout, capped by what is left of its absolute lifetime: the store forgets
an idle session by itself, and a use extends it (``touch``, which never recreates a
session that was ended meanwhile). Each worker keeps what it read for ``cache_ttl``
seconds, so the hot path does not pay a store round trip per request.

Ending is authoritative in the store (the key is deleted), then announced to every worker
and replica (:mod:`ztproxy.sessions.revocation`): a worker that follows the announcements
drops its copy at once, one that missed them re-reads the store within ``cache_ttl``.

Sessions are indexed (:mod:`ztproxy.sessions.indexes`) by user, by email, by IdP session
(back-channel logout), by public handle (the admin API's name for a session: it sees store
keys, never ids) and by device (a marker per device and session, written in the background
the first time a worker serves the session from that device). No aiohttp; ``now`` is always
a parameter.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Callable, Collection, Coroutine
from dataclasses import dataclass
from typing import Any

import structlog

from ztproxy import metrics
from ztproxy.config.sessions import SessionsConfig
from ztproxy.errors import SessionStoreUnavailable
from ztproxy.sessions.indexes import (
    device_index,
    device_marker,
    handle_bucket,
    legacy_handle_index,
    lookups,
    shared_indexes,
    written_indexes,
)
from ztproxy.sessions.model import Session
from ztproxy.sessions.revocation import STORE_KEY_RE, RevocationFeed
from ztproxy.sessions.sealing import Ticket, public_handle, seal, unseal
from ztproxy.sessions.store import SessionStore

DEFAULT_CACHE_SIZE = 100_000
DEVICES_NOTED_SIZE = 100_000  # (session, device) pairs this worker remembers having recorded

_log = structlog.get_logger("ztproxy.sessions")


@dataclass(frozen=True, slots=True)
class Ending:
    """Why sessions are ended on purpose, for whoever is told (``SessionManager.on_end``): the apps
    that subscribe to CAEP ``session-revoked`` events (``ztproxy.signals.outbox``)."""

    initiator: str  # CAEP 3.1 initiating_entity: admin, user, policy or system
    reason: str  # in words, for the receiving app's administrators
    provider: str | None = None
    subject: str | None = None  # the user at the provider, when the one ending sessions knows it
    email: str | None = None


# Told of every ending made on purpose (not of expiries, nor of the session a new sign-in replaces).
OnEnd = Callable[[Collection[str], Ending], None]


@dataclass(frozen=True, slots=True)
class StoredSession:
    """What the admin API can tell of a session without opening it."""

    handle: str
    provider: str
    expires_in: float  # seconds until the store forgets it unless it is used (idle, capped by lifetime)


@dataclass(slots=True)
class _Cached:
    key: bytes  # the ticket's key: a cookie with the same id but another key must not match
    session: Session
    read_at: float
    touched_at: float


def _finished(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (error := task.exception()) is not None:
        _log.error("session_task_failed", error=repr(error)[:200])


class SessionManager:
    def __init__(self, store: SessionStore, config: SessionsConfig, *, cache_size: int = DEFAULT_CACHE_SIZE) -> None:
        self.store = store
        self.config = config
        self._cache: dict[str, _Cached] = {}
        self._reading: dict[str, asyncio.Future[tuple[bytes, Session] | None]] = {}  # store reads under way
        self._cache_size = cache_size
        # Extend the store expiry at most this often per session and worker.
        self._touch_every = min(config.idle_timeout / 8, 60.0)
        # Counts the copies dropped for endings: a store read overtaken by one is not kept.
        self._forgets = 0
        self.revocations = RevocationFeed(store, forget=self.forget, forget_all=self._forget_all, spawn=self.spawn)
        self._devices_noted: dict[tuple[str, str], None] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.on_end: list[OnEnd] = []  # told of the endings made on purpose (see Ending)

    def _indexes(self, store_key: str, session: Session) -> list[str]:
        return written_indexes(store_key, session, legacy=self.config.legacy_indexes)

    def _expiry(self, session: Session, now: float) -> float:
        return min(self.config.idle_timeout, session.created + self.config.lifetime - now)

    def live(self, session: Session, now: float) -> bool:
        return now < session.created + self.config.lifetime

    def from_cache(self, ticket: Ticket, now: float) -> tuple[bool, Session | None]:
        """(True, the session or None) from this worker's recent copy; (False, None): read the store."""
        cached = self._cache.get(ticket.store_key)
        if cached is None or now - cached.read_at >= self.config.cache_ttl:
            return False, None
        if hmac.compare_digest(cached.key, ticket.key) and self.live(cached.session, now):
            return True, cached.session
        return True, None

    async def load(self, ticket: Ticket, now: float, *, fresh: bool = False) -> Session | None:
        """The session this cookie opens, or None (unknown, ended, expired, tampered).

        ``fresh`` reads the store even when this worker's copy is recent.
        """
        if not fresh:
            hit, session = self.from_cache(ticket, now)
            if hit:
                return session
        key = ticket.store_key
        cached = self._cache.get(key)
        if fresh:
            return await self._read(ticket, now, cached)
        # One store read per expired copy, however many requests of the session are in flight:
        # they wait for the read already under way instead of each reading the store.
        reading = self._reading.get(key)
        if reading is not None:
            opened = await asyncio.shield(reading)
            if opened is not None and hmac.compare_digest(opened[0], ticket.key):
                return opened[1]
            return await self._read(ticket, now, cached)  # the read was another cookie's: our own
        reading = asyncio.get_running_loop().create_future()
        self._reading[key] = reading
        try:
            session = await self._read(ticket, now, cached)
        except BaseException as exc:
            reading.set_exception(exc)
            reading.exception()  # the waiters, if any, get it; none is no error
            raise
        else:
            reading.set_result(None if session is None else (ticket.key, session))
            return session
        finally:
            del self._reading[key]

    async def _read(self, ticket: Ticket, now: float, cached: _Cached | None) -> Session | None:
        key = ticket.store_key
        forgets = self._forgets
        sealed = await self.store.get(key)
        if sealed is None:
            self._cache.pop(key, None)
            ended = self.revocations.ended_at.pop(key, None)
            if ended is not None:  # the first request an ending refused here
                # Wall clock on both ends (announcements carry the ending's wall-clock time).
                ended_at, cause = ended
                metrics.revocation_enforced(key, ended_at, time.time())
                if cause is not None:
                    metrics.signal_enforced(cause, key, ended_at, time.time())
            return None
        plain = unseal(ticket, sealed)
        session = Session.from_bytes(plain) if plain is not None else None
        if plain is not None and session is None:
            # Opened with the right key, in a format this release does not read (one written
            # by a newer release): the user signs in afresh, as for an unknown cookie.
            _log.warning("session_format_unknown", session=ticket.public_id, ticket_version=ticket.version)
        if session is None or not self.live(session, now):
            # Foreign or tampered bytes are left alone (the right cookie may still open them);
            # an expired session is removed.
            if session is not None:
                await self.end(ticket)
                metrics.session_ended("expired")
            return None
        touched_at = cached.touched_at if cached is not None else now
        if now - touched_at >= self._touch_every:
            await self.store.touch(key, self._expiry(session, now), indexes=self._indexes(key, session))
            touched_at = now
        self._remember(key, _Cached(ticket.key, session, now, touched_at), unless_forgotten_since=forgets)
        return session

    async def start(self, session: Session, now: float, *, replacing: Ticket | None = None) -> Ticket:
        """Store a new session under a fresh id (OWASP: rotate the id at every sign-in)."""
        if replacing is not None:
            await self.end(replacing)
        ticket = Ticket.new()
        await self.store.put(ticket.store_key, seal(ticket, session.to_bytes()), self._expiry(session, now),
                             indexes=self._indexes(ticket.store_key, session))
        self._remember(ticket.store_key, _Cached(ticket.key, session, now, now))
        return ticket

    async def update(self, ticket: Ticket, session: Session, now: float) -> bool:
        """Replace the session's content (an identity refresh); False when it was ended meanwhile."""
        forgets = self._forgets
        # A legacy ticket's session stays in the format of its release, which may still serve it.
        written = await self.store.put(ticket.store_key, seal(ticket, session.to_bytes(legacy=ticket.legacy)),
                                       self._expiry(session, now), only_existing=True,
                                       indexes=self._indexes(ticket.store_key, session))
        if written:
            self._remember(ticket.store_key, _Cached(ticket.key, session, now, now), unless_forgotten_since=forgets)
        else:
            self._cache.pop(ticket.store_key, None)
        return written

    async def end(self, ticket: Ticket, ending: Ending | None = None) -> None:
        await self.end_keys([ticket.store_key], ending=ending)

    async def end_keys(self, keys: Collection[str], *, cause: str | None = None, at: float | None = None,
                       ending: Ending | None = None, listed_in: Collection[str] = ()) -> None:
        """End the sessions stored under ``keys``: deleted from the store, then announced (``cause``:
        the security event that ended them, accepted at ``at``); ``ending``: why, for ``on_end``;
        ``listed_in``: shared indexes known to list them, read again afterwards (see below)."""
        if not keys:
            return
        # The indexes (user, email, IdP session, handle bucket) drop a gone session when they
        # are next read; reading them once the sessions are gone lets a store that can (one
        # Redis, the memory store) drop the members now, and an index left empty with them.
        # Known here: the ones given, each key's handle bucket, and the indexes of this
        # worker's copies (sign-out, a refused refresh...) under both releases' names.
        shared = set(listed_in)
        shared.update(handle_bucket(public_handle(key)) for key in keys)
        shared.update(index for key in keys if (cached := self._cache.get(key)) is not None
                      for legacy in (False, True) for index in shared_indexes(cached.session, legacy=legacy))
        # The handle index of its own the release before gave a session goes with it.
        await self.store.delete(*keys, *(legacy_handle_index(public_handle(key)) for key in keys))
        await self.revocations.announce(keys, cause=cause, at=at)
        if ending is not None:
            for told in self.on_end:
                try:
                    told(keys, ending)
                except Exception:  # a listener's bug must not undo or fail the ending
                    _log.exception("session_end_listener_failed")
        try:
            await asyncio.gather(*(self.store.members(index) for index in sorted(shared)))
        except SessionStoreUnavailable:  # the sessions are ended; the indexes catch up later
            _log.debug("session_indexes_not_settled", indexes=len(shared))

    async def end_matching(self, provider: str, *, subject: str | None = None,
                           idp_session: str | None = None, email: str | None = None,
                           cause: str | None = None, at: float | None = None, ending: Ending | None = None) -> int:
        """End every session of a user (by subject or email), or of one IdP session (back-channel logout);
        ``cause``, ``at`` and ``ending`` as for :meth:`end_keys`."""
        indexes = lookups(provider, subject=subject, idp_session=idp_session, email=email)
        keys = await self._listed(indexes)
        await self.end_keys(keys, cause=cause, at=at, ending=ending, listed_in=indexes)
        return len(keys)

    async def matching(self, provider: str, *, subject: str | None = None, idp_session: str | None = None,
                       email: str | None = None) -> set[str]:
        """The store keys of the sessions of one IdP session, else of a user (by subject, else email)."""
        return await self._listed(lookups(provider, subject=subject, idp_session=idp_session, email=email))

    async def _listed(self, indexes: list[str]) -> set[str]:
        """The keys listed in any of ``indexes``."""
        found = await asyncio.gather(*(self.store.members(index) for index in indexes))
        return {key for members in found for key in members}

    async def end_handle(self, handle: str, ending: Ending | None = None) -> int:
        """End the session with this public handle; how many ended (0 or 1)."""
        # A bucket lists other sessions too; the release before gave a handle a key of its own.
        listed, legacy = await asyncio.gather(self.store.members(handle_bucket(handle)),
                                              self.store.members(legacy_handle_index(handle)))
        keys = {key for key in listed if public_handle(key) == handle} | set(legacy)
        await self.end_keys(keys, ending=ending)
        return len(keys)

    async def end_device(self, device_id: str, ending: Ending | None = None) -> int:
        """End every session served from this device so far; how many were live."""
        index = device_index(device_id)
        markers = await self.store.members(index)
        values = await asyncio.gather(*(self.store.get(marker) for marker in markers))
        candidates = {value.decode("ascii", errors="replace") for value in values if value is not None}
        keys = sorted(key for key in candidates if STORE_KEY_RE.fullmatch(key))
        remaining = await asyncio.gather(*(self.store.ttl(key) for key in keys))
        live = [key for key, ttl in zip(keys, remaining, strict=True) if ttl is not None]
        await self.end_keys(live, ending=ending)
        await self.store.delete(*markers, index)
        return len(live)

    async def sessions_of(self, provider: str, subject: str) -> list[StoredSession]:
        """The live sessions of a user at one provider, soonest to expire first."""
        keys = sorted(await self._listed(lookups(provider, subject=subject)))
        remaining = await asyncio.gather(*(self.store.ttl(key) for key in keys))
        found = [StoredSession(public_handle(key), provider, ttl)
                 for key, ttl in zip(keys, remaining, strict=True) if ttl is not None]
        return sorted(found, key=lambda entry: (entry.expires_in, entry.handle))

    def note_device(self, store_key: str, session: Session, device_id: str, now: float) -> None:
        """Record, off the request's path, that this session is used from this device.

        Once per session, device and worker: the first sighting spawns one store write (a
        marker living as long as the session may, indexed by device, so revoking the device
        finds the session); later ones cost a dict lookup. A failed write is retried at the
        next sighting.
        """
        seen = (store_key, device_id)
        if seen in self._devices_noted:
            return
        left = session.created + self.config.lifetime - now
        if left <= 0:
            return
        noted = self._devices_noted
        if len(noted) >= DEVICES_NOTED_SIZE:
            del noted[next(iter(noted))]  # the oldest: at worst it is written once more
        noted[seen] = None
        self.spawn(self._record_device(store_key, device_id, left))

    async def _record_device(self, store_key: str, device_id: str, left: float) -> None:
        try:
            await self.store.put(device_marker(device_id, store_key), store_key.encode("ascii"), left,
                                 only_new=True, indexes=[device_index(device_id)])
        except SessionStoreUnavailable:
            self._devices_noted.pop((store_key, device_id), None)
            _log.warning("session_device_not_recorded", session=public_handle(store_key))

    def watch(self, store_key: str, on_end: Callable[[], None]) -> Callable[[], None]:
        """Call ``on_end()`` once if this session ends (see :meth:`RevocationFeed.watch`)."""
        return self.revocations.watch(store_key, on_end)

    async def follow_revocations(self) -> None:
        """Drop copies of sessions ended elsewhere, until cancelled (a task for the app's lifetime)."""
        await self.revocations.follow()

    def active(self, now: float, *, within: float = 300.0) -> int:
        """Sessions this worker served in the last ``within`` seconds (the active-sessions gauge)."""
        return sum(1 for entry in self._cache.values()
                   if now - entry.read_at < within and self.live(entry.session, now))

    def forget(self, store_key: str) -> None:
        """Drop this worker's copy (after a revocation seen elsewhere)."""
        self._forgets += 1
        self._cache.pop(store_key, None)

    def _forget_all(self) -> None:
        self._forgets += 1
        self._cache.clear()

    async def close(self) -> None:
        """Stop background work (device records, checks of watched sessions)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` in the background, owned by the manager (cancelled by :meth:`close`).

        Its failure is logged as ``session_task_failed`` with the error alone: asyncio's own
        "exception was never retrieved" would format a traceback, which caches the source
        of every file in the stack for the life of the process.
        """
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(_finished)
        task.add_done_callback(self._tasks.discard)

    def _remember(self, key: str, entry: _Cached, *, unless_forgotten_since: int | None = None) -> None:
        if unless_forgotten_since is not None and self._forgets != unless_forgotten_since:
            # An ending was announced while this copy was read: it may be the copy of an ended
            # session, read just before the deletion. Served once, never kept.
            self._cache.pop(key, None)
            return
        cache = self._cache
        if key not in cache and len(cache) >= self._cache_size:
            del cache[next(iter(cache))]  # the oldest insertion
        cache[key] = entry

"""Revocation everywhere: announce ended sessions to every worker and replica, and act on it.

The store is the authority: a session is ended by deleting its key there, and only then
announced, on the store's broadcast channel, as its store key (a hash: a message names no
id and opens nothing). A worker that hears an announcement drops its cached copy, so its
next request for that session reads the store and finds nothing. Announcements are at
most once: a worker whose subscription was down misses some, which is why a cached copy
lives only ``cache_ttl`` seconds, and why every (re)subscription drops the whole cache.

Open WebSockets are watched by store key (:meth:`RevocationFeed.watch`). An announcement
is only a reason to look: a watched session is closed once the store confirms it is gone,
so a forged or stale message can make a worker re-read, never close what still lives.
No aiohttp.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Collection, Coroutine, Iterable
from typing import Any

import structlog

from ztproxy.errors import SessionStoreUnavailable
from ztproxy.sessions.store import SessionStore

REVOCATION_CHANNEL = "ztproxy:sessions:ended"
# A session's store key, as a ticket of either version spells it (``sealing``).
STORE_KEY_RE = re.compile(r"s:(?:[A-Za-z0-9_-]{32}|[0-9a-f]{64})")
CAUSE_RE = re.compile(r"[a-z][a-z0-9-]{0,63}")  # a security event type's last segment
MAX_KEYS_PER_MESSAGE = 1000  # a long list goes out as several messages
MAX_REMEMBERED_ENDINGS = 10_000

_log = structlog.get_logger("ztproxy.sessions")


def encode_keys(keys: Iterable[str], at: float | None = None, cause: str | None = None) -> list[bytes]:
    """The messages announcing ``keys``: store keys separated by spaces, a bounded number each,
    after ``t=<unix ms>`` (when they ended, for the revocation delay metric) if ``at`` is given,
    and ``e=<event>`` (the security event that ended them, for its enforcement metric) if ``cause`` is."""
    ordered = sorted(set(keys))
    stamp = [] if at is None else [f"t={int(at * 1000)}"]
    if cause is not None and CAUSE_RE.fullmatch(cause):
        stamp.append(f"e={cause}")
    return [" ".join(stamp + ordered[i:i + MAX_KEYS_PER_MESSAGE]).encode("ascii")
            for i in range(0, len(ordered), MAX_KEYS_PER_MESSAGE)]


def decode_keys(message: bytes) -> list[str]:
    """The store keys in an announcement; anything else in it is ignored."""
    text = message.decode("ascii", errors="replace")
    return [key for key in text.split(" ") if STORE_KEY_RE.fullmatch(key)]


def decode_time(message: bytes) -> float | None:
    """When the announced sessions ended (Unix seconds), if the message says."""
    first = message.split(b" ", 1)[0]
    if first.startswith(b"t=") and first[2:].isdigit() and len(first) < 20:
        return int(first[2:]) / 1000
    return None


def decode_cause(message: bytes) -> str | None:
    """The security event that ended the announced sessions, if the message says."""
    for part in message.split(b" ", 2)[:2]:
        if part.startswith(b"e="):
            cause = part[2:].decode("ascii", errors="replace")
            return cause if CAUSE_RE.fullmatch(cause) else None
    return None


class RevocationFeed:
    """Announces endings, follows the announcements, and closes what watches an ended session."""

    def __init__(self, store: SessionStore, *, forget: Callable[[str], None], forget_all: Callable[[], None],
                 spawn: Callable[[Coroutine[Any, Any, None]], None]) -> None:
        self.store = store
        self._forget = forget
        self._forget_all = forget_all
        self._spawn = spawn  # runs a check in the background, owned (and cancelled) by the caller
        self._watchers: dict[str, set[Callable[[], None]]] = {}
        self.subscriptions = 0  # how many times the feed was (re)subscribed
        # When recently ended sessions ended (and the security event that ended them, if one
        # did), until a request of theirs is denied here.
        self.ended_at: dict[str, tuple[float, str | None]] = {}

    async def announce(self, keys: Collection[str], *, cause: str | None = None, at: float | None = None) -> None:
        """Tell every worker and replica that these sessions ended (after deleting them); ``cause``:
        the security event that ended them, accepted at ``at`` (default: now)."""
        now = time.time() if at is None else at
        self.ended_here(keys, at=now, cause=cause)
        try:
            for message in encode_keys(keys, at=now, cause=cause):
                await self.store.publish(REVOCATION_CHANNEL, message)
        except SessionStoreUnavailable:
            # The deletion holds: other workers deny within their cache_ttl all the same.
            _log.warning("revocation_not_announced", sessions=len(keys))

    def ended_here(self, keys: Iterable[str], at: float | None = None, cause: str | None = None) -> None:
        """These sessions are known to be gone: drop them and close what watches them."""
        for key in keys:
            self._forget(key)
            if at is not None:
                self._note_end(key, at, cause)
            for on_end in self._watchers.pop(key, ()):
                _call(on_end)

    async def follow(self) -> None:
        """Act on every announcement until cancelled (the app runs this as a task)."""
        await self.store.subscribe(REVOCATION_CHANNEL, self._heard, self._subscribed)

    def watch(self, key: str, on_end: Callable[[], None]) -> Callable[[], None]:
        """Call ``on_end`` once if the session stored under ``key`` ends; returns the way to stop.

        The store is also asked once now, so an ending announced just before the watch began
        is not missed.
        """
        self._watchers.setdefault(key, set()).add(on_end)
        self._spawn(self._confirm([key]))

        def stop() -> None:
            watchers = self._watchers.get(key)
            if watchers is not None:
                watchers.discard(on_end)
                if not watchers:
                    del self._watchers[key]

        return stop

    def _heard(self, message: bytes) -> None:
        keys = decode_keys(message)
        at, cause = decode_time(message), decode_cause(message)
        for key in keys:
            self._forget(key)
            if at is not None:
                self._note_end(key, at, cause)
        watched = [key for key in keys if key in self._watchers]
        if watched:
            self._spawn(self._confirm(watched))

    def _subscribed(self) -> None:
        self.subscriptions += 1
        if self.subscriptions > 1:
            _log.info("revocations_resubscribed", watched_sessions=len(self._watchers))
        # Whatever was announced while we were not listening is unknown: re-read everything.
        self._forget_all()
        if self._watchers:
            self._spawn(self._confirm(list(self._watchers)))

    def _note_end(self, key: str, at: float, cause: str | None) -> None:
        ended = self.ended_at
        if key not in ended and len(ended) >= MAX_REMEMBERED_ENDINGS:
            del ended[next(iter(ended))]
        ended[key] = (at, cause)

    async def _confirm(self, keys: list[str]) -> None:
        """Close the watchers of those ``keys`` that the store no longer has."""
        try:
            remaining = await asyncio.gather(*(self.store.ttl(key) for key in keys))
        except SessionStoreUnavailable:
            # Unknown, not ended: the next (re)subscription, once the store is back, asks again.
            return
        self.ended_here(key for key, ttl in zip(keys, remaining, strict=True) if ttl is None)


def _call(on_end: Callable[[], None]) -> None:
    try:
        on_end()
    except Exception:  # one watcher's bug must not keep the others open
        _log.exception("session_watcher_failed")

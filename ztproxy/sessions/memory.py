"""The in-process session store (``store: memory``): for one process, tests and the demo.

Entries expire lazily (a read of an expired key deletes it) and every write also prunes a
bounded number of expired entries, so memory follows the live entries without a background
task. The store holds at most ``max_entries`` keys: a write of a new key into a full store
evicts the entry closest to its expiry (a login that was about to time out, before a
twelve-hour session). Index memberships are tracked per key, so they vanish with the key.

Every method runs without awaiting in between, which makes each one atomic for asyncio:
two concurrent ``only_new`` writes of one key cannot both win.

``open(config)`` (what ``sessions.store: memory`` uses) gives everyone in the process who
opens a configuration naming the same store the same store until the last of them closes
it: in one process, the proxy and its admin listener see the same sessions, and so does
the configuration a reload swaps in (it opens the store before the old one closes it). Published messages
reach that store's subscribers at once, in the publisher's call. Tables (``put_entry``) are
dicts apart from ``max_entries``: a flood of sessions never evicts a revocation.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog

from ztproxy.config.sessions import SessionsConfig
from ztproxy.sessions.store import check_entry_ttl, check_put

_log = structlog.get_logger("ztproxy.sessions")

DEFAULT_MAX_ENTRIES = 100_000
PRUNE_PER_WRITE = 16  # expired entries dropped per write, at most: bounded work per call


@dataclass(slots=True)
class _Entry:
    value: bytes
    expires_at: float
    serial: int  # tells this entry's place in the expiry heap from stale ones
    indexes: frozenset[str]


# The store spec (``sessions.store``) -> the process's open store for it. Held weakly: a store
# its users dropped without closing (a test's, say) must not be handed to the next opener.
_OPENED: weakref.WeakValueDictionary[str, MemoryStore] = weakref.WeakValueDictionary()


class MemoryStore:
    """A dict with expiry, index sets and a size cap; see the module docstring."""

    def __init__(self, config: SessionsConfig | None = None, *, max_entries: int = DEFAULT_MAX_ENTRIES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._indexes: dict[str, set[str]] = {}
        # (expires_at, serial, key); entries rewritten since are skipped when popped.
        self._expiries: list[tuple[float, int, str]] = []
        self._serials = itertools.count()
        self._subscribers: dict[str, list[Callable[[bytes], None]]] = {}
        self._tables: dict[str, dict[str, tuple[bytes, float]]] = {}  # entry -> (value, expires_at)
        self._users = 1  # close() forgets everything when the last user of an opened store calls it

    @classmethod
    def open(cls, config: SessionsConfig) -> MemoryStore:
        """The process's store for ``config.store`` (see the module docstring)."""
        opened = _OPENED.get(config.store)
        if opened is not None:
            opened._users += 1
            return opened
        store = cls(config)
        _OPENED[config.store] = store
        return store

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: str) -> bytes | None:
        entry = self._live(key, self._clock())
        return entry.value if entry is not None else None

    async def put(self, key: str, value: bytes, ttl: float, *, only_new: bool = False,
                  only_existing: bool = False, indexes: Sequence[str] = ()) -> bool:
        check_put(ttl, only_new=only_new, only_existing=only_existing)
        now = self._clock()
        current = self._live(key, now)
        if (only_new and current is not None) or (only_existing and current is None):
            return False
        self._prune(now, PRUNE_PER_WRITE)
        if current is None and len(self._entries) >= self.max_entries:
            self._evict_soonest()
        joined = frozenset(indexes) | (current.indexes if current is not None else frozenset())
        self._store(key, _Entry(bytes(value), now + ttl, next(self._serials), joined))
        for index in indexes:
            self._indexes.setdefault(index, set()).add(key)
        return True

    async def touch(self, key: str, ttl: float, *, indexes: Sequence[str]) -> bool:
        check_put(ttl)
        now = self._clock()
        entry = self._live(key, now)
        if entry is None:
            return False
        self._store(key, _Entry(entry.value, now + ttl, next(self._serials),
                                entry.indexes | frozenset(indexes)))
        for index in indexes:
            self._indexes.setdefault(index, set()).add(key)
        return True

    async def delete(self, *keys: str) -> None:
        for key in keys:
            self._remove(key)
            # As in Redis, where an index is a key too: deleting it forgets its members.
            self._indexes.pop(key, None)

    async def members(self, index: str) -> list[str]:
        now = self._clock()
        return [key for key in list(self._indexes.get(index, ())) if self._live(key, now) is not None]

    async def increment(self, key: str, ttl: float) -> int:
        check_put(ttl)
        now = self._clock()
        current = self._live(key, now)
        if current is None:
            await self.put(key, b"1", ttl)
            return 1
        count = int(current.value) + 1
        self._entries[key] = _Entry(str(count).encode(), current.expires_at, current.serial, current.indexes)
        return count

    async def ttl(self, key: str) -> float | None:
        now = self._clock()
        entry = self._live(key, now)
        return entry.expires_at - now if entry is not None else None

    async def publish(self, channel: str, message: bytes) -> None:
        for deliver in list(self._subscribers.get(channel, ())):
            try:
                deliver(message)
            except Exception:  # one subscriber's bug must not fail the publisher's revocation
                _log.exception("subscriber_failed", channel=channel)

    async def subscribe(self, channel: str, on_message: Callable[[bytes], None],
                        on_subscribed: Callable[[], None]) -> None:
        subscribers = self._subscribers.setdefault(channel, [])
        subscribers.append(on_message)
        try:
            on_subscribed()
            await asyncio.Event().wait()  # nothing to reconnect to: wait to be cancelled
        finally:
            subscribers.remove(on_message)
            if not subscribers:
                self._subscribers.pop(channel, None)

    async def put_entry(self, table: str, entry: str, value: bytes, ttl: float | None) -> None:
        check_entry_ttl(ttl)
        entries = self._table(table, self._clock())
        entries[entry] = (bytes(value), math.inf if ttl is None else self._clock() + ttl)

    async def delete_entry(self, table: str, entry: str) -> bool:
        entries = self._table(table, self._clock())
        return entries.pop(entry, None) is not None

    async def entries(self, table: str) -> dict[str, bytes]:
        return {entry: value for entry, (value, _) in self._table(table, self._clock()).items()}

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        self._users -= 1
        if self._users > 0:
            return
        for spec, store in list(_OPENED.items()):
            if store is self:
                del _OPENED[spec]
        self._entries.clear()
        self._indexes.clear()
        self._expiries.clear()
        self._tables.clear()

    def _table(self, table: str, now: float) -> dict[str, tuple[bytes, float]]:
        """The live entries of ``table`` (the expired ones dropped: tables are small)."""
        entries = self._tables.setdefault(table, {})
        for entry in [entry for entry, (_, expires_at) in entries.items() if expires_at <= now]:
            del entries[entry]
        return entries

    def _live(self, key: str, now: float) -> _Entry | None:
        entry = self._entries.get(key)
        if entry is not None and entry.expires_at <= now:
            self._remove(key)
            return None
        return entry

    def _store(self, key: str, entry: _Entry) -> None:
        self._entries[key] = entry
        heapq.heappush(self._expiries, (entry.expires_at, entry.serial, key))
        # Rewrites leave stale heap items behind; rebuild before they outnumber the entries.
        if len(self._expiries) > 2 * len(self._entries) + 1024:
            self._expiries = [(e.expires_at, e.serial, k) for k, e in self._entries.items()]
            heapq.heapify(self._expiries)

    def _remove(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        for index in entry.indexes:
            members = self._indexes.get(index)
            if members is not None:
                members.discard(key)
                if not members:
                    del self._indexes[index]

    def _current(self, item: tuple[float, int, str]) -> bool:
        entry = self._entries.get(item[2])
        return entry is not None and entry.serial == item[1]

    def _prune(self, now: float, limit: int) -> None:
        heap = self._expiries
        while limit > 0 and heap and heap[0][0] <= now:
            item = heapq.heappop(heap)
            if self._current(item):
                self._remove(item[2])
                limit -= 1

    def _evict_soonest(self) -> None:
        heap = self._expiries
        while heap:
            item = heapq.heappop(heap)
            if self._current(item):
                self._remove(item[2])
                return


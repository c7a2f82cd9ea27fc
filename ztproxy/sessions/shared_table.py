"""A table in the session store that every worker and replica keeps a copy of, in step.

The store is the authority: an entry is written to the table ``name`` (``put_entry``), then
a new generation is written under ``{name}:generation`` and the change is announced on
``ztproxy:{name}`` with the entry and its value. A worker that hears an announcement hands
the entry to its copy at once (``on_announced``: an announcement may only add, never
remove), and reads the whole table again (``on_loaded``), as it does at every
(re)subscription and whenever the generation it reads every ``poll_every`` seconds has
changed. Pub/sub is at most once, so a worker that missed an announcement catches up within
``poll_every``; one that cannot reach the store keeps the copy it read last. A copy that
time changes too (a grant runs out) gives its :class:`Deadlines`: the follower wakes when
the next is due and lets the copy settle it.

Service revocations (``ztproxy.service_revocations``), the effects of security signals
(``ztproxy.signals.effects``) and just-in-time access requests (``ztproxy.grants.registry``)
are such tables. No aiohttp.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from typing import Protocol

import orjson
import structlog

from ztproxy.background import stop_if_cancelled
from ztproxy.errors import SessionStoreUnavailable
from ztproxy.sessions.store import SessionStore

GENERATION_TTL = 30 * 86400.0  # a generation that expires only costs every worker one more read

_log = structlog.get_logger("ztproxy.sessions")


class Deadlines(Protocol):
    """The moments a copy must act on besides the table's changes (a grant's end, a request's expiry)."""

    def next_due(self) -> float | None:
        """Seconds until the next is due (0 or less: due now), None when none is."""

    async def settle_due(self) -> None:
        """Act on what is due; may raise ``SessionStoreUnavailable`` (tried again at the next wake)."""


class SharedTable:
    """One table of the store and this worker's way of following it (see the module docstring)."""

    def __init__(self, store: SessionStore, name: str, *, poll_every: float,
                 on_loaded: Callable[[dict[str, bytes]], None],
                 on_announced: Callable[[str, bytes], None] | None = None,
                 deadlines: Deadlines | None = None) -> None:
        self.store = store
        self.name = name
        self.generation_key = f"{name}:generation"
        self.channel = f"ztproxy:{name}"
        self.loaded = False  # until the table was read once, this worker's copy vouches for nothing
        self._poll_every = poll_every
        self._on_loaded = on_loaded
        self._on_announced = on_announced  # None: an announcement only has the table read again
        self._deadlines = deadlines
        self._generation: bytes | None = None
        self._wake = asyncio.Event()

    async def write(self, entry: str, value: bytes, ttl: float | None) -> None:
        """Store ``entry`` (replacing the one of that name; ``ttl`` None: until removed), then announce it."""
        await self.store.put_entry(self.name, entry, value, ttl)
        await self._changed({"entry": entry, "value": value.decode()})

    async def remove(self, entry: str) -> bool:
        """Forget ``entry``; False when there was none."""
        removed = await self.store.delete_entry(self.name, entry)
        if removed:
            await self._changed({})
        return removed

    async def entries(self) -> dict[str, bytes]:
        return await self.store.entries(self.name)

    async def reload(self) -> None:
        """Read the generation, then the whole table (in that order: a writer changes them the other way)."""
        generation = await self.store.get(self.generation_key)
        self._on_loaded(await self.entries())
        self.loaded = True
        self._generation = generation

    async def follow(self, *, unavailable_event: str) -> None:
        """Keep this worker's copy current until cancelled (a task for the app's lifetime);
        ``unavailable_event`` is logged once per store outage."""
        subscription = asyncio.ensure_future(self.store.subscribe(self.channel, self._heard, self._wake.set))
        unavailable = False
        try:
            while True:
                stop_if_cancelled()  # a store call may have dropped it (ztproxy.background)
                wait = self._poll_every
                due = None if self._deadlines is None else self._deadlines.next_due()
                if due is not None:
                    wait = min(wait, max(0.0, due))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._wake.wait()
                heard = self._wake.is_set()
                self._wake.clear()
                try:
                    if self._deadlines is not None:
                        await self._deadlines.settle_due()
                    if heard or not self.loaded or await self.store.get(self.generation_key) != self._generation:
                        await self.reload()
                    unavailable = False
                except SessionStoreUnavailable:
                    if not unavailable:  # once per outage; the copy read last stays in force
                        _log.warning(unavailable_event, loaded=self.loaded)
                    unavailable = True
        finally:
            subscription.cancel()
            await asyncio.gather(subscription, return_exceptions=True)

    def _heard(self, message: bytes) -> None:
        announced = announced_entry(message)
        if announced is not None and self.loaded and self._on_announced is not None:
            self._on_announced(*announced)
        self._wake.set()

    async def _changed(self, fields: dict[str, object]) -> None:
        await self.store.put(self.generation_key, os.urandom(16), GENERATION_TTL)
        try:
            await self.store.publish(self.channel, orjson.dumps({"t": int(time.time() * 1000), **fields}))
        except SessionStoreUnavailable:
            # Stored all the same: the other workers see the new generation within their poll.
            _log.warning("shared_table_not_announced", table=self.name)
        await self.reload()


def announced_entry(message: bytes) -> tuple[str, bytes] | None:
    """The entry and value an announcement carries, if it carries one."""
    try:
        fields = orjson.loads(message)
        entry, value = fields["entry"], fields["value"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    if not isinstance(entry, str) or not isinstance(value, str):
        return None
    return entry, value.encode()

"""What a session store implements, what the manager uses, and :func:`open_store`.

Stores move opaque bytes under string keys; the callers hash ids into keys (``s:<hex>``,
``idx:u:<hash>``, ``once:<hex>``) and seal values (``sealing``) before they get here
(STYLE 13). Every failure to reach the backend leaves a store as
:class:`~ztproxy.errors.SessionStoreUnavailable` (fail closed, a 503), and every operation
is bounded by ``sessions.store_timeout``.

A custom store (``sessions.store: package.module:Class``, built as ``Class(config)``)
implements two small Protocols, each operation atomic in its backend:

- :class:`Storage`: ``get``, ``put``, ``delete``, ``members``. ``put`` is where atomicity
  matters: ``only_new`` has exactly one winner among concurrent writers (the single-use
  markers: OIDC ``state``, a token's ``jti``, the refresh lock), ``only_existing`` never
  brings back an ended session, and the key joins its ``indexes`` in the same step, only
  when written (revocation by user, IdP session or device finds every session);
- :class:`Broadcast`: ``publish``, ``subscribe``, the channel announcing revocations to
  every worker and replica (``ztproxy.sessions.revocation``). It is at most once: a
  subscriber that was disconnected misses what was published meanwhile, and is told when
  it is subscribed again, so it can re-read what it holds.

An ``async close()``, if the class has one, is called when the store is no longer used.
:func:`open_store` wraps such a class in an :class:`AdaptedStore`, which builds the rest
of :class:`SessionStore` on those six: ``touch`` re-puts the value it reads with
``only_existing``, and every value goes with its wall-clock expiry, which ``ttl`` reads;
a table entry is a key of its own in the table's index, and an entry kept "until deleted"
lives :data:`ADAPTED_UNTIL_DELETED` there. ``increment`` reads and re-puts a counter (not
atomic: concurrent increments may count once).
That costs a read more per ``touch``, and a content change that lands between that read and
the re-put is overwritten by the value it read. The built-in stores (``memory``, Redis)
implement :class:`SessionStore` themselves: ``touch`` and ``ttl`` are one step each there.

The contract test suite (``tests/integration/sessions/test_store_contract.py``) runs
against every store, and against an adapted custom one; a new built-in passes it before
it is registered in :data:`ztproxy.config.sessions.STORES`.
"""

from __future__ import annotations

import hashlib
import math
import struct
import time
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from ztproxy.config.sessions import SessionsConfig, resolve_store


@runtime_checkable
class Storage(Protocol):
    """Values with an expiry, and indexes of keys: what every store keeps."""

    async def get(self, key: str) -> bytes | None:
        """The value stored under ``key``, or None when absent or expired."""

    async def put(self, key: str, value: bytes, ttl: float, *, only_new: bool = False,
                  only_existing: bool = False, indexes: Sequence[str] = ()) -> bool:
        """Store ``value`` for ``ttl`` seconds; True when it was written.

        ``only_new``: only if ``key`` is absent (single-use markers: the OIDC ``state``, a
        token's ``jti``); of concurrent writers exactly one wins. ``only_existing``: only
        if ``key`` is present (never brings back an ended session). ``indexes``: also add
        ``key`` to each named index (all sessions of a user), only when written.
        """

    async def delete(self, *keys: str) -> None:
        """Forget every key given (an index name too); absent ones are no error."""

    async def members(self, index: str) -> list[str]:
        """The keys added to ``index`` that still exist, in no particular order."""


@runtime_checkable
class Broadcast(Protocol):
    """One channel per name, to every subscriber of every worker and replica, at most once."""

    async def publish(self, channel: str, message: bytes) -> None:
        """Send ``message`` to whoever subscribes to ``channel`` now (at most once, never kept)."""

    async def subscribe(self, channel: str, on_message: Callable[[bytes], None],
                        on_subscribed: Callable[[], None]) -> None:
        """Call ``on_message`` with each message published on ``channel``, until cancelled.

        Never returns otherwise: when the backend goes away it reconnects and subscribes
        again, for as long as it takes. ``on_subscribed`` is called after every
        subscription, the first included: messages published before it may have been missed.
        """


@runtime_checkable
class SessionStore(Storage, Broadcast, Protocol):
    """What the session manager, the revocation feed and the OIDC flows use."""

    async def touch(self, key: str, ttl: float, *, indexes: Sequence[str]) -> bool:
        """Let ``key`` live ``ttl`` seconds from now without changing it; False if absent.

        ``indexes`` (required, ``()`` for none): the indexes the key was put in. A store
        may keep an index only as long as the expiries it was told about, so a key touched
        without its indexes can drop out of them while it lives (and escape a revocation).
        """

    async def ttl(self, key: str) -> float | None:
        """The seconds ``key`` has left to live, or None when it is absent."""

    async def put_entry(self, table: str, entry: str, value: bytes, ttl: float | None) -> None:
        """Keep ``value`` as ``entry`` of ``table`` for ``ttl`` seconds (None: until deleted), replacing it.

        A table is a small map read whole (the revoked services and tokens): every worker
        reads all of it in one step (:meth:`entries`), so it stays small.
        """

    async def delete_entry(self, table: str, entry: str) -> bool:
        """Forget ``entry`` of ``table``; True when it was there."""

    async def entries(self, table: str) -> dict[str, bytes]:
        """Every live entry of ``table`` with its value, in one step."""

    async def increment(self, key: str, ttl: float) -> int:
        """Add one to the counter under ``key`` and return it; a new counter lives ``ttl`` seconds.

        Counters are shared by every worker and replica (sign-ins started per address); the
        expiry is set by the first increment only, so a counter counts within a fixed window.
        """

    async def ping(self) -> None:
        """Raise SessionStoreUnavailable unless the backend answers (for readiness)."""

    async def close(self) -> None:
        """Release connections; the store is not used afterwards."""


@runtime_checkable
class CustomStore(Storage, Broadcast, Protocol):
    """What a custom store implements (see the module docstring)."""


def open_store(config: SessionsConfig) -> SessionStore:
    """Build the store ``config.store`` names (nothing connects before the first operation).

    - ``memory``: in this process only (:mod:`ztproxy.sessions.memory`);
    - ``redis://[[user]:password@]host[:port][/db]``, ``rediss://...`` (TLS; a private CA
      as ``?ssl_ca_certs=/path/ca.pem``, a client certificate as ``ssl_certfile`` and
      ``ssl_keyfile``: redis-py's URL options), ``unix://[[user]:password@]/path/to/redis.sock[?db=N]``;
    - ``redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/master_name[/db]``
      ``[?sentinel_password=...&sentinel_username=...]``: the master of ``master_name`` as
      the listed sentinels (default port 26379) report it, followed across failovers. The
      password in the URL is the data nodes'; sentinels with their own use the query.
      Passwords are percent-encoded (``@`` as ``%40``), also when they come from a
      ``${ENV_VAR}`` that the config loader expands;
    - ``package.module:Class``: any class built as ``Class(config)`` that implements
      :class:`CustomStore` (adapted) or the whole :class:`SessionStore` (used as it is).

    A class with an ``open(config)`` class method is built with it instead: the memory store
    gives everyone in the process who opens a configuration naming the same store the same store.

    Raises ValueError, with a message fit for an operator, for anything else.
    """
    factory = resolve_store(config.store)
    opener = getattr(factory, "open", None)
    store = opener(config) if callable(opener) else factory(config)
    if isinstance(store, SessionStore):
        return store
    if isinstance(store, CustomStore):
        return AdaptedStore(store)
    raise ValueError(f"{config.store!r} did not build a session store: it needs get, put, delete, members, "
                     "publish and subscribe")


def check_put(ttl: float, *, only_new: bool = False, only_existing: bool = False) -> None:
    """Argument checks every store makes alike (a wrong call is a bug, not bad input)."""
    if not (ttl > 0 and math.isfinite(ttl)):
        raise ValueError(f"ttl must be a positive number of seconds, got {ttl!r}")
    if only_new and only_existing:
        raise ValueError("only_new and only_existing exclude each other")


def check_entry_ttl(ttl: float | None) -> None:
    if ttl is not None:
        check_put(ttl)


# An adapted store keeps a table entry "until deleted" this long (its backend needs an expiry).
ADAPTED_UNTIL_DELETED = 10 * 365 * 86400.0
_EXPIRY = struct.Struct(">Q")  # before each value an adapted store keeps: its wall-clock expiry, in ms
_PING_KEY = "ztproxy:ping"


class AdaptedStore:
    """A :class:`SessionStore` built on a :class:`CustomStore` (see the module docstring)."""

    def __init__(self, store: CustomStore, *, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self._clock = clock  # wall clock: every worker and replica reads the same expiries

    async def get(self, key: str) -> bytes | None:
        stored = await self.store.get(key)
        return None if stored is None else stored[_EXPIRY.size:]

    async def put(self, key: str, value: bytes, ttl: float, *, only_new: bool = False,
                  only_existing: bool = False, indexes: Sequence[str] = ()) -> bool:
        check_put(ttl, only_new=only_new, only_existing=only_existing)
        return await self.store.put(key, self._with_expiry(value, ttl), ttl, only_new=only_new,
                                    only_existing=only_existing, indexes=indexes)

    async def touch(self, key: str, ttl: float, *, indexes: Sequence[str]) -> bool:
        check_put(ttl)
        stored = await self.store.get(key)
        if stored is None:
            return False
        return await self.store.put(key, self._with_expiry(stored[_EXPIRY.size:], ttl), ttl,
                                    only_existing=True, indexes=indexes)

    async def delete(self, *keys: str) -> None:
        if keys:
            await self.store.delete(*keys)

    async def members(self, index: str) -> list[str]:
        return await self.store.members(index)

    async def ttl(self, key: str) -> float | None:
        stored = await self.store.get(key)
        if stored is None:
            return None
        expires_at: int = _EXPIRY.unpack_from(stored)[0]
        return max(0.0, expires_at / 1000 - self._clock())

    async def increment(self, key: str, ttl: float) -> int:
        # Not atomic here: two replicas counting at once may both write the same count.
        check_put(ttl)
        stored = await self.store.get(key)
        if stored is None:
            await self.put(key, b"1", ttl)
            return 1
        expires_at: int = _EXPIRY.unpack_from(stored)[0]
        count = int(stored[_EXPIRY.size:]) + 1
        left = expires_at / 1000 - self._clock()
        if left <= 0:
            await self.put(key, b"1", ttl)
            return 1
        await self.store.put(key, stored[:_EXPIRY.size] + str(count).encode(), left)
        return count

    async def publish(self, channel: str, message: bytes) -> None:
        await self.store.publish(channel, message)

    async def subscribe(self, channel: str, on_message: Callable[[bytes], None],
                        on_subscribed: Callable[[], None]) -> None:
        await self.store.subscribe(channel, on_message, on_subscribed)

    async def put_entry(self, table: str, entry: str, value: bytes, ttl: float | None) -> None:
        check_entry_ttl(ttl)
        name = entry.encode("utf-8", errors="surrogatepass")
        await self.put(_entry_key(table, entry), _ENTRY_NAME.pack(len(name)) + name + value,
                       ADAPTED_UNTIL_DELETED if ttl is None else ttl, indexes=[table])

    async def delete_entry(self, table: str, entry: str) -> bool:
        key = _entry_key(table, entry)
        present = await self.store.get(key) is not None
        await self.store.delete(key)
        return present

    async def entries(self, table: str) -> dict[str, bytes]:
        found: dict[str, bytes] = {}
        for key in await self.store.members(table):
            stored = await self.get(key)
            if stored is not None and len(stored) >= _ENTRY_NAME.size:
                size: int = _ENTRY_NAME.unpack_from(stored)[0]
                name = stored[_ENTRY_NAME.size:_ENTRY_NAME.size + size].decode("utf-8", errors="surrogatepass")
                found[name] = stored[_ENTRY_NAME.size + size:]
        return found

    async def ping(self) -> None:
        await self.store.get(_PING_KEY)

    async def close(self) -> None:
        close = getattr(self.store, "close", None)
        if callable(close):
            await close()

    def _with_expiry(self, value: bytes, ttl: float) -> bytes:
        return _EXPIRY.pack(int((self._clock() + ttl) * 1000)) + value


_ENTRY_NAME = struct.Struct(">I")  # before an adapted table entry's value: the length of its name


def _entry_key(table: str, entry: str) -> str:
    digest = hashlib.sha256(entry.encode("utf-8", errors="surrogatepass")).hexdigest()
    return f"{table}:entry:{digest}"

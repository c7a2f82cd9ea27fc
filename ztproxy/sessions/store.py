"""The session store Protocol, and :func:`open_store`, which picks a store from the config.

Stores move opaque bytes under string keys; the callers hash ids into keys (``s:<hex>``,
``idx:user:<hex>``, ``once:<hex>``) and seal values (``sealing``) before they get here
(STYLE 13). Every failure to reach the backend leaves a store as
:class:`~ztproxy.errors.SessionStoreUnavailable` (fail closed, a 503), and every operation
is bounded by ``sessions.store_timeout``.

Stores also carry one broadcast channel per name (``publish`` / ``subscribe``), which
announces revocations to every worker and replica (``ztproxy.sessions.revocation``). It is
at most once: a subscriber that was disconnected misses what was published meanwhile, and
is told when it is subscribed again, so it can re-read what it holds.

The contract test suite (``tests/integration/sessions/test_store_contract.py``) runs
against every store; a new one passes it before it is registered in
:data:`ztproxy.config.sessions.STORES`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from ztproxy.config.sessions import SessionsConfig, resolve_store


@runtime_checkable
class SessionStore(Protocol):
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

    async def touch(self, key: str, ttl: float, *, indexes: Sequence[str]) -> bool:
        """Let ``key`` live ``ttl`` seconds from now without rewriting it; False if absent.

        ``indexes`` (required, ``()`` for none): the indexes the key was put in. A store
        may keep an index only as long as the expiries it was told about, so a key touched
        without its indexes can drop out of them while it lives (and escape a revocation).
        """

    async def delete(self, *keys: str) -> None:
        """Forget every key given (an index name too); absent ones are no error."""

    async def members(self, index: str) -> list[str]:
        """The keys added to ``index`` that still exist, in no particular order."""

    async def ttl(self, key: str) -> float | None:
        """The seconds ``key`` has left to live, or None when it is absent."""

    async def publish(self, channel: str, message: bytes) -> None:
        """Send ``message`` to whoever subscribes to ``channel`` now (at most once, never kept)."""

    async def subscribe(self, channel: str, on_message: Callable[[bytes], None],
                        on_subscribed: Callable[[], None]) -> None:
        """Call ``on_message`` with each message published on ``channel``, until cancelled.

        Never returns otherwise: when the backend goes away it reconnects and subscribes
        again, for as long as it takes. ``on_subscribed`` is called after every
        subscription, the first included: messages published before it may have been missed.
        """

    async def ping(self) -> None:
        """Raise SessionStoreUnavailable unless the backend answers (for readiness)."""

    async def close(self) -> None:
        """Release connections; the store is not used afterwards."""


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
      :class:`SessionStore`.

    A class with an ``open(config)`` class method is built with it instead: the memory store
    gives everyone in the process who opens a configuration naming the same store the same store.

    Raises ValueError, with a message fit for an operator, for anything else.
    """
    factory = resolve_store(config.store)
    opener = getattr(factory, "open", None)
    store = opener(config) if callable(opener) else factory(config)
    if not isinstance(store, SessionStore):
        raise ValueError(f"{config.store!r} did not build a session store: it needs get, put, touch, delete, "
                         "members, ttl, publish, subscribe, ping and close")
    return store


def check_put(ttl: float, *, only_new: bool = False, only_existing: bool = False) -> None:
    """Argument checks every store makes alike (a wrong call is a bug, not bad input)."""
    if not (ttl > 0 and math.isfinite(ttl)):
        raise ValueError(f"ttl must be a positive number of seconds, got {ttl!r}")
    if only_new and only_existing:
        raise ValueError("only_new and only_existing exclude each other")

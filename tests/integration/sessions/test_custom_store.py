"""The store contract, run unchanged against a custom store that implements only the small
Protocols (``Storage`` and ``Broadcast``), named by an import string and adapted by ``open_store``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence

import pytest

from tests.integration.sessions.test_store_contract import *  # noqa: F403 - every contract test
from ztproxy.config.sessions import SessionsConfig
from ztproxy.sessions.store import AdaptedStore, CustomStore, SessionStore, open_store


class DictStore:
    """A custom store in a few lines: values with an expiry, index sets, in-process broadcast."""

    def __init__(self, config: SessionsConfig) -> None:
        self.values: dict[str, tuple[bytes, float]] = {}
        self.indexes: dict[str, set[str]] = {}
        self.subscribers: dict[str, list[Callable[[bytes], None]]] = {}

    def _exists(self, key: str) -> bool:
        entry = self.values.get(key)
        if entry is not None and entry[1] <= time.monotonic():
            del self.values[key]
            return False
        return entry is not None

    async def get(self, key: str) -> bytes | None:
        return self.values[key][0] if self._exists(key) else None

    async def put(self, key: str, value: bytes, ttl: float, *, only_new: bool = False,
                  only_existing: bool = False, indexes: Sequence[str] = ()) -> bool:
        exists = self._exists(key)
        if (only_new and exists) or (only_existing and not exists):
            return False
        self.values[key] = (value, time.monotonic() + ttl)
        for index in indexes:
            self.indexes.setdefault(index, set()).add(key)
        return True

    async def delete(self, *keys: str) -> None:
        for key in keys:
            self.values.pop(key, None)
            self.indexes.pop(key, None)

    async def members(self, index: str) -> list[str]:
        return [key for key in self.indexes.get(index, ()) if self._exists(key)]

    async def publish(self, channel: str, message: bytes) -> None:
        for deliver in list(self.subscribers.get(channel, ())):
            with contextlib.suppress(Exception):  # one subscriber's bug is not the publisher's
                deliver(message)

    async def subscribe(self, channel: str, on_message: Callable[[bytes], None],
                        on_subscribed: Callable[[], None]) -> None:
        subscribers = self.subscribers.setdefault(channel, [])
        subscribers.append(on_message)
        try:
            on_subscribed()
            await asyncio.Event().wait()
        finally:
            subscribers.remove(on_message)


@pytest.fixture
async def store() -> AsyncIterator[SessionStore]:
    opened = open_store(SessionsConfig(store=f"{__name__}:DictStore"))
    assert isinstance(opened, AdaptedStore)
    yield opened
    await opened.close()


def test_the_custom_store_implements_only_the_small_protocols() -> None:
    custom = DictStore(SessionsConfig())
    assert isinstance(custom, CustomStore)
    assert not isinstance(custom, SessionStore)

"""What both Redis stores (standalone/Sentinel and Cluster) do alike: one key at a time.

A value read, a key's remaining life, a counter, and the operations on a table (a hash of
entries beside a sorted set of their expiries, both in one slot) each touch one key, or
keys of one slot, so they run unchanged on a standalone Redis and on a Redis Cluster.
How a store reaches Redis (its client, its failure translation in ``_run``) and how it
names a table's two keys are its own.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import TypeVar, cast

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript

from ztproxy.sessions.store import check_entry_ttl, check_put

T = TypeVar("T")


class KeyCommands:
    """``get``, ``ttl``, ``increment`` and the table operations, on ``_client`` and ``_script``."""

    _client: Redis | RedisCluster
    _script: AsyncScript  # the store's script, with the ``increment`` and ``entry_*`` operations

    async def _run(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Run one operation within the store timeout; any failure is SessionStoreUnavailable."""
        raise NotImplementedError

    def _table_keys(self, table: str) -> list[str]:
        return [table, table + ":expiries"]

    async def get(self, key: str) -> bytes | None:
        # The client keeps the default decode_responses=False: values come back as bytes.
        return cast("bytes | None", await self._run(lambda: self._client.get(key)))

    async def put_entry(self, table: str, entry: str, value: bytes, ttl: float | None) -> None:
        check_entry_ttl(ttl)
        expiry = "" if ttl is None else milliseconds(ttl)
        await self._run(lambda: self._script(keys=self._table_keys(table), args=["entry_put", entry, value, expiry]))

    async def delete_entry(self, table: str, entry: str) -> bool:
        return bool(await self._run(lambda: self._script(keys=self._table_keys(table), args=["entry_delete", entry])))

    async def entries(self, table: str) -> dict[str, bytes]:
        flat = await self._run(lambda: self._script(keys=self._table_keys(table), args=["entries"]))
        return {flat[i].decode("utf-8", errors="surrogateescape"): flat[i + 1] for i in range(0, len(flat), 2)}

    async def increment(self, key: str, ttl: float) -> int:
        check_put(ttl)
        ttl_ms = milliseconds(ttl)
        return int(await self._run(lambda: self._script(keys=[key], args=["increment", ttl_ms])))

    async def ttl(self, key: str) -> float | None:
        remaining = int(await self._run(lambda: self._client.pttl(key)))
        if remaining == -2:
            return None
        return math.inf if remaining == -1 else remaining / 1000


def milliseconds(ttl: float) -> int:
    return max(1, math.ceil(ttl * 1000))

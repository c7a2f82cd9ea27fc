"""Memo: a per-worker map of results worth remembering between requests, bounded.

For pure results that the same client asks for again and again (its session cookie
parsed, its Cookie header without the proxy's cookies, its identity headers). When it
reaches ``limit`` entries the whole map is dropped: a flood of distinct keys costs a
refill, never memory, and no eviction bookkeeping is paid on the hot path. Lookups are
plain ``dict.get``.
"""

from __future__ import annotations

from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


class Memo(dict[K, V]):
    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def remember(self, key: K, value: V) -> V:
        if len(self) >= self.limit:
            self.clear()
        self[key] = value
        return value

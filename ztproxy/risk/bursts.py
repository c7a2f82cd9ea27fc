"""Counting bursts: this worker's recent events per key, bounded (``denial-burst``).

A session's 403 decisions are counted where they are made, with no I/O: each worker counts
its own, so with several workers or replicas a burst spread over them is counted per worker.
Sign-ins are counted in the session store instead (every replica's), by :mod:`ztproxy.risk_service`.
"""

from __future__ import annotations

from collections import deque

DEFAULT_KEYS = 100_000


class Bursts:
    def __init__(self, *, max_keys: int = DEFAULT_KEYS) -> None:
        self._events: dict[str, deque[float]] = {}
        self._max_keys = max_keys

    def add(self, key: str, now: float, window: float, count: int) -> bool:
        """Count one event for ``key``; True when it is the ``count``-th within ``window`` (then start over)."""
        events = self._events.get(key)
        if events is None:
            if len(self._events) >= self._max_keys:
                del self._events[next(iter(self._events))]  # the oldest key
            events = self._events[key] = deque(maxlen=count)
        while events and now - events[0] > window:
            events.popleft()
        events.append(now)
        if len(events) >= count:
            del self._events[key]
            return True
        return False

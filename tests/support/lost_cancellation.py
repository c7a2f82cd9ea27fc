"""A Redis session store that loses one cancellation, as redis-py does on Python 3.11 now and then.

redis-py sends each command under ``asyncio.wait_for``, which on Python 3.11 returns the result
of an operation that ended just as its caller was cancelled and drops the cancellation (CPython
issue 86296). :class:`LosesACancellation` makes that rare moment certain, once: the first read
(``get``) cancelled while Redis has not answered still runs to its end, and its caller gets its
outcome as if nothing had happened; a second cancellation goes through.

A configuration names it by import string (``sessions.store:
tests.support.lost_cancellation:LosesACancellation``); the Redis it talks to is the URL in the
environment variable :data:`URL_VARIABLE`. The stores it opened are in ``LosesACancellation.opened``.
"""

from __future__ import annotations

import asyncio
import os
from typing import ClassVar

from ztproxy.config.sessions import SessionsConfig
from ztproxy.sessions.redis import RedisStore

URL_VARIABLE = "ZTPROXY_TEST_REDIS_URL"


class LosesACancellation(RedisStore):
    """A real :class:`RedisStore` whose reads lose the first cancellation that comes during one."""

    opened: ClassVar[list[LosesACancellation]] = []

    def __init__(self, config: SessionsConfig) -> None:
        super().__init__(config.model_copy(update={"store": os.environ[URL_VARIABLE]}))
        self.reads = 0  # reads started
        self.lost = 0  # cancellations lost (one at most)
        self.opened.append(self)

    @classmethod
    def check_spec(cls, url: str) -> None:
        """Anything goes: the configuration names this class, the environment gives the URL."""

    async def get(self, key: str) -> bytes | None:
        self.reads += 1
        operation = asyncio.ensure_future(super().get(key))
        try:
            return await asyncio.shield(operation)
        except asyncio.CancelledError:
            if self.lost:
                operation.cancel()
                raise
            self.lost += 1
            return await operation  # cancelled again meanwhile: that one goes through

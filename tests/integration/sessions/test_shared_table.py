"""A shared table's follower ends at its first cancellation, even one that a store call dropped."""

from __future__ import annotations

import asyncio

import pytest

from tests.integration.sessions.test_redis_broadcast import until
from tests.support.lost_cancellation import URL_VARIABLE, LosesACancellation
from tests.support.redis import RedisFactory
from ztproxy.config.sessions import SessionsConfig
from ztproxy.sessions.shared_table import SharedTable

pytestmark = pytest.mark.integration

STORE_TIMEOUT = 2.0
ENDED_WITHIN = STORE_TIMEOUT + 10.0  # the lost read runs to its end, then the loop's next turn stops


async def test_a_follower_whose_read_lost_the_cancellation_ends_at_its_next_turn(
        redis_factory: RedisFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    redis = redis_factory.start()
    monkeypatch.setenv(URL_VARIABLE, redis.url)
    store = LosesACancellation(SessionsConfig(store="memory", store_timeout=STORE_TIMEOUT))
    table = SharedTable(store, "things", poll_every=0.1, on_loaded=lambda entries: None)
    following = asyncio.create_task(table.follow(unavailable_event="things_unavailable"))
    try:
        await until(lambda: store.reads > 1, "the follower to read the table", bound=20.0)
        redis.freeze()  # each read now waits store_timeout: the cancellation comes during one
        reads = store.reads
        await until(lambda: store.reads > reads, "a read that Redis will not answer", bound=20.0)
        following.cancel()  # once: nothing cancels it again
        done, _ = await asyncio.wait({following}, timeout=ENDED_WITHIN)
        assert following in done and following.cancelled()
        assert store.lost == 1
    finally:
        redis.thaw()
        following.cancel()
        await asyncio.wait({following}, timeout=ENDED_WITHIN)
        await store.close()

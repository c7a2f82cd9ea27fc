"""The Redis broadcast channel across faults: subscribers come back by themselves after Redis does.

Pub/sub is at most once: while a subscriber is disconnected it misses what is published.
What these tests check is that it always subscribes again (after a restart, a killed
connection, an outage, a silent connection) and says so (``on_subscribed``), which is when
the session manager drops its cache and re-checks what it watches.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

import pytest

from tests.support.redis import RedisFactory, RedisServer
from ztproxy.config.sessions import SessionsConfig
from ztproxy.sessions import redis as redis_store
from ztproxy.sessions.redis import RedisStore

pytestmark = pytest.mark.integration

CHANNEL = "ztproxy:test"
BOUND = 10.0


class Listener:
    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self.subscriptions = 0


@contextlib.asynccontextmanager
async def subscribed(server: RedisServer, *, store_timeout: float = 1.0) -> AsyncIterator[tuple[RedisStore, Listener]]:
    store = RedisStore(SessionsConfig(store=server.url, store_timeout=store_timeout))
    listener = Listener()

    def on_subscribed() -> None:
        listener.subscriptions += 1

    task = asyncio.create_task(store.subscribe(CHANNEL, listener.messages.append, on_subscribed))
    try:
        await until(lambda: listener.subscriptions == 1, "the first subscription")
        yield store, listener
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert task.cancelled()  # it ended by being cancelled, never by giving up
        await store.close()


async def until(condition: Callable[[], bool], what: str, bound: float = BOUND) -> None:
    deadline = time.monotonic() + bound
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {bound}s: {what}")
        await asyncio.sleep(0.02)


async def delivered_after_resubscribing(server: RedisServer, listener: Listener) -> None:
    await until(lambda: listener.subscriptions == 2, "the subscriber subscribes again")
    assert server.command("PUBSUB", "NUMSUB", CHANNEL)[1] == 1  # one connection, not two
    server.command("PUBLISH", CHANNEL, b"after")
    await until(lambda: listener.messages[-1:] == [b"after"], "a message published afterwards")


async def test_resubscribes_after_redis_restarts(redis_factory: RedisFactory) -> None:
    server = redis_factory.start()
    async with subscribed(server) as (_, listener):
        server.command("PUBLISH", CHANNEL, b"before")
        await until(lambda: listener.messages == [b"before"], "a message before the restart")
        server.restart()
        await delivered_after_resubscribing(server, listener)


async def test_resubscribes_after_its_connection_is_killed(redis_factory: RedisFactory) -> None:
    server = redis_factory.start()
    async with subscribed(server) as (_, listener):
        assert server.command("CLIENT", "KILL", "TYPE", "pubsub") == 1
        await delivered_after_resubscribing(server, listener)


async def test_keeps_trying_through_an_outage(redis_factory: RedisFactory) -> None:
    server = redis_factory.start()
    async with subscribed(server, store_timeout=0.3) as (_, listener):
        server.stop()
        await asyncio.sleep(1.5)  # several failed attempts: the backoff reaches its cap of 1 s
        assert listener.subscriptions == 1
        server.start()
        await delivered_after_resubscribing(server, listener)


async def test_a_silent_connection_is_noticed_and_replaced(redis_factory: RedisFactory,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redis_store, "LIVENESS_PING_INTERVAL", 0.3)
    monkeypatch.setattr(redis_store, "LISTEN_TICK", 0.1)
    server = redis_factory.start()
    async with subscribed(server, store_timeout=0.3) as (_, listener):
        server.freeze()  # the connection stays open; nothing answers (a silent network)
        try:
            await asyncio.sleep(1.5)  # a liveness PING goes unanswered; resubscribing times out
        finally:
            server.thaw()
        await delivered_after_resubscribing(server, listener)

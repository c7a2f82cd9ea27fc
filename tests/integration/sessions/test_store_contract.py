"""The SessionStore contract, run against every store: memory, Redis, Redis through Sentinel, Redis Cluster.

A new store is registered once it passes this file unchanged (add it to ``STORE_KINDS``).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from tests.support.redis import RedisFactory, SentinelSetup
from tests.support.redis_cluster import ClusterSetup
from ztproxy.config.sessions import SessionsConfig
from ztproxy.sessions.memory import MemoryStore
from ztproxy.sessions.redis import RedisStore
from ztproxy.sessions.redis_cluster import RedisClusterStore
from ztproxy.sessions.store import SessionStore, open_store

pytestmark = pytest.mark.integration

STORE_KINDS = ["memory", "redis", "sentinel", "cluster"]
SHORT_TTL = 0.2
LONG_TTL = 60.0
EXPIRY_BOUND = 5.0  # how long a short-lived key may take to vanish, at most


@pytest.fixture(params=STORE_KINDS)
async def store(request: pytest.FixtureRequest, redis_factory: RedisFactory) -> AsyncIterator[SessionStore]:
    kind = request.param
    if kind == "memory":
        url = "memory"
    elif kind == "redis":
        url = redis_factory.start().url
    elif kind == "cluster":
        cluster: ClusterSetup = request.getfixturevalue("shared_redis_cluster")
        cluster.flush()
        url = cluster.url
    else:
        shared: SentinelSetup = request.getfixturevalue("shared_sentinel")
        shared.master().command("FLUSHALL")
        url = shared.url
    opened = open_store(SessionsConfig(store=url, store_timeout=2.0))
    assert isinstance(opened, {"memory": MemoryStore, "cluster": RedisClusterStore}.get(kind, RedisStore))
    yield opened
    await opened.close()


async def eventually(check: Callable[[], Awaitable[bool]], what: str, bound: float = EXPIRY_BOUND) -> None:
    deadline = time.monotonic() + bound
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {bound}s: {what}")
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("value", [b"", b"\x00", b"\xff\xfe\x80 not utf-8 \xc3\x28", bytes(range(256)),
                                   "caf\u00e9 \u2603".encode(), b"\r\n$-1\r\n*0\r\n"])
async def test_round_trip_of_any_bytes(store: SessionStore, value: bytes) -> None:
    assert await store.put("s:value", value, LONG_TTL) is True
    stored = await store.get("s:value")
    assert stored == value
    assert type(stored) is bytes


async def test_absent_key_reads_none(store: SessionStore) -> None:
    assert await store.get("s:never-written") is None


async def test_put_replaces_the_value(store: SessionStore) -> None:
    await store.put("s:a", b"first", LONG_TTL)
    assert await store.put("s:a", b"second", LONG_TTL) is True
    assert await store.get("s:a") == b"second"


async def test_large_value(store: SessionStore) -> None:
    value = os.urandom(2 * 1024 * 1024)
    await store.put("s:large", value, LONG_TTL)
    assert await store.get("s:large") == value


async def test_keys_are_isolated(store: SessionStore) -> None:
    keys = ["s:1", "s:10", "S:1", "s:1 ", "idx:user:1", "once:1"]
    for number, key in enumerate(keys):
        await store.put(key, str(number).encode(), LONG_TTL)
    assert [await store.get(key) for key in keys] == [str(n).encode() for n in range(len(keys))]
    await store.delete("s:1")
    assert await store.get("s:1") is None
    assert await store.get("s:10") == b"1"


async def test_value_expires_after_its_ttl(store: SessionStore) -> None:
    await store.put("s:short", b"x", SHORT_TTL)
    await store.put("s:long", b"y", LONG_TTL)
    assert await store.get("s:short") == b"x"

    async def gone() -> bool:
        return await store.get("s:short") is None

    await eventually(gone, "the short-lived key expires")
    assert await store.get("s:long") == b"y"


async def test_only_new_refuses_a_second_write(store: SessionStore) -> None:
    assert await store.put("once:jti", b"first", LONG_TTL, only_new=True) is True
    assert await store.put("once:jti", b"second", LONG_TTL, only_new=True) is False
    assert await store.get("once:jti") == b"first"


async def test_only_new_succeeds_again_once_the_key_expired(store: SessionStore) -> None:
    await store.put("once:state", b"first", SHORT_TTL, only_new=True)

    async def writable() -> bool:
        return await store.put("once:state", b"second", LONG_TTL, only_new=True)

    await eventually(writable, "an expired marker can be set again")
    assert await store.get("once:state") == b"second"


async def test_concurrent_only_new_writes_have_exactly_one_winner(store: SessionStore) -> None:
    values = [f"writer-{n}".encode() for n in range(25)]
    results = await asyncio.gather(*(store.put("once:race", v, LONG_TTL, only_new=True) for v in values))
    assert results.count(True) == 1
    assert await store.get("once:race") == values[results.index(True)]


async def test_only_existing_never_creates(store: SessionStore) -> None:
    assert await store.put("s:ended", b"x", LONG_TTL, only_existing=True) is False
    assert await store.get("s:ended") is None
    await store.put("s:live", b"old", LONG_TTL)
    assert await store.put("s:live", b"new", LONG_TTL, only_existing=True) is True
    assert await store.get("s:live") == b"new"


async def test_touch_sets_a_new_expiry_without_rewriting(store: SessionStore) -> None:
    await store.put("s:a", b"kept", LONG_TTL)
    assert await store.touch("s:a", SHORT_TTL, indexes=()) is True
    assert await store.get("s:a") == b"kept"

    async def gone() -> bool:
        return await store.get("s:a") is None

    await eventually(gone, "a touch can shorten the expiry too")


async def test_touch_extends_the_expiry(store: SessionStore) -> None:
    await store.put("s:a", b"kept", SHORT_TTL)
    assert await store.touch("s:a", LONG_TTL, indexes=()) is True
    await asyncio.sleep(SHORT_TTL * 2)
    assert await store.get("s:a") == b"kept"


async def test_touch_of_an_absent_key_creates_nothing(store: SessionStore) -> None:
    assert await store.touch("s:missing", LONG_TTL, indexes=()) is False
    assert await store.touch("s:missing", LONG_TTL, indexes=["idx:user:u"]) is False
    assert await store.get("s:missing") is None
    assert await store.members("idx:user:u") == []


async def test_delete_of_several_keys(store: SessionStore) -> None:
    for key in ("s:a", "s:b", "s:c"):
        await store.put(key, b"v", LONG_TTL)
    await store.delete("s:a", "s:b", "s:never-there")
    await store.delete()
    assert [await store.get(k) for k in ("s:a", "s:b", "s:c")] == [None, None, b"v"]


async def test_index_lists_its_members(store: SessionStore) -> None:
    await store.put("s:a", b"1", LONG_TTL, indexes=["idx:user:u1"])
    await store.put("s:b", b"2", LONG_TTL, indexes=["idx:user:u1"])
    await store.put("s:c", b"3", LONG_TTL, indexes=["idx:user:u1", "idx:sid:x"])
    await store.put("s:d", b"4", LONG_TTL, indexes=["idx:user:u2"])
    await store.put("s:a", b"1 again", LONG_TTL, indexes=["idx:user:u1"])  # listed once
    assert sorted(await store.members("idx:user:u1")) == ["s:a", "s:b", "s:c"]
    assert await store.members("idx:sid:x") == ["s:c"]
    assert await store.members("idx:user:u2") == ["s:d"]
    assert await store.members("idx:user:nobody") == []
    assert await store.get("s:c") == b"3"


async def test_index_forgets_deleted_and_expired_members(store: SessionStore) -> None:
    await store.put("s:expiring", b"1", SHORT_TTL, indexes=["idx:user:u"])
    await store.put("s:deleted", b"2", LONG_TTL, indexes=["idx:user:u"])
    await store.put("s:kept", b"3", LONG_TTL, indexes=["idx:user:u"])
    await store.delete("s:deleted")
    assert "s:deleted" not in await store.members("idx:user:u")

    async def pruned() -> bool:
        return await store.members("idx:user:u") == ["s:kept"]

    await eventually(pruned, "the expired member leaves the index")


async def test_a_refused_write_joins_no_index(store: SessionStore) -> None:
    await store.put("s:taken", b"x", LONG_TTL)
    assert await store.put("s:taken", b"y", LONG_TTL, only_new=True, indexes=["idx:user:u"]) is False
    assert await store.put("s:absent", b"y", LONG_TTL, only_existing=True, indexes=["idx:user:u"]) is False
    assert await store.members("idx:user:u") == []


async def test_concurrent_writers_of_one_key_leave_it_listed(store: SessionStore) -> None:
    # One winner among writers that each join the index; the losers' refusals must not take
    # the winner's key out of it (a revocation by user would miss it).
    results = await asyncio.gather(*(store.put("s:race", f"writer-{n}".encode(), LONG_TTL, only_new=True,
                                               indexes=["idx:user:race"]) for n in range(25)))
    assert results.count(True) == 1
    assert await store.members("idx:user:race") == ["s:race"]
    touched = await asyncio.gather(*(store.touch("s:race", LONG_TTL, indexes=["idx:user:race"]) for _ in range(10)),
                                   *(store.touch("s:gone", LONG_TTL, indexes=["idx:user:race"]) for _ in range(10)))
    assert touched == [True] * 10 + [False] * 10
    assert await store.members("idx:user:race") == ["s:race"]


async def test_touch_keeps_a_member_listed_past_its_first_expiry(store: SessionStore) -> None:
    await store.put("s:a", b"1", SHORT_TTL, indexes=["idx:user:u"])
    assert await store.touch("s:a", LONG_TTL, indexes=["idx:user:u"]) is True
    await asyncio.sleep(SHORT_TTL * 2)
    assert await store.members("idx:user:u") == ["s:a"]


async def test_deleting_an_index_keeps_its_members(store: SessionStore) -> None:
    await store.put("s:a", b"1", LONG_TTL, indexes=["idx:user:u"])
    await store.delete("idx:user:u")
    assert await store.members("idx:user:u") == []
    assert await store.get("s:a") == b"1"


@pytest.mark.parametrize("ttl", [0, -1, math.nan, math.inf])
async def test_a_ttl_that_is_not_a_positive_number_is_refused(store: SessionStore, ttl: float) -> None:
    with pytest.raises(ValueError, match="ttl"):
        await store.put("s:a", b"x", ttl)
    with pytest.raises(ValueError, match="ttl"):
        await store.touch("s:a", ttl, indexes=())
    assert await store.get("s:a") is None


async def test_only_new_and_only_existing_together_are_refused(store: SessionStore) -> None:
    with pytest.raises(ValueError, match="exclude"):
        await store.put("s:a", b"x", LONG_TTL, only_new=True, only_existing=True)


async def test_increment_counts_within_the_window_of_its_first_increment(store: SessionStore) -> None:
    assert [await store.increment("count:a", LONG_TTL) for _ in range(3)] == [1, 2, 3]
    assert await store.increment("count:b", LONG_TTL) == 1
    left = await store.ttl("count:a")
    assert left is not None and LONG_TTL - EXPIRY_BOUND < left <= LONG_TTL
    await store.increment("count:short", SHORT_TTL)

    async def restarted() -> bool:
        return await store.get("count:short") is None

    await eventually(restarted, "a counter ends with its window")
    assert await store.increment("count:short", LONG_TTL) == 1


async def test_ping_answers(store: SessionStore) -> None:
    await store.ping()


async def test_ttl_tells_how_long_a_key_has_left(store: SessionStore) -> None:
    assert await store.ttl("s:absent") is None
    await store.put("s:a", b"x", LONG_TTL)
    left = await store.ttl("s:a")
    assert left is not None and LONG_TTL - EXPIRY_BOUND < left <= LONG_TTL
    await store.touch("s:a", 10, indexes=())
    left = await store.ttl("s:a")
    assert left is not None and 10 - EXPIRY_BOUND < left <= 10
    await store.delete("s:a")
    assert await store.ttl("s:a") is None


# --- tables: small maps read whole (the revoked services and tokens) ---


async def test_a_table_lists_its_entries_with_their_values(store: SessionStore) -> None:
    assert await store.entries("t:revoked") == {}
    await store.put_entry("t:revoked", "client_id:billing", b"first", None)
    unicode = "jti:caf\u00e9 \u2603"
    await store.put_entry("t:revoked", unicode, bytes(range(256)), LONG_TTL)
    await store.put_entry("t:other", "client_id:billing", b"elsewhere", None)
    assert await store.entries("t:revoked") == {"client_id:billing": b"first", unicode: bytes(range(256))}
    await store.put_entry("t:revoked", "client_id:billing", b"second", None)  # replaced
    assert (await store.entries("t:revoked"))["client_id:billing"] == b"second"
    assert await store.entries("t:other") == {"client_id:billing": b"elsewhere"}


async def test_a_table_entry_is_deleted_once(store: SessionStore) -> None:
    await store.put_entry("t:revoked", "service:spiffe://corp/a", b"", None)
    assert await store.delete_entry("t:revoked", "service:spiffe://corp/a") is True
    assert await store.delete_entry("t:revoked", "service:spiffe://corp/a") is False
    assert await store.entries("t:revoked") == {}


async def test_a_table_entry_expires_after_its_ttl_and_one_without_stays(store: SessionStore) -> None:
    await store.put_entry("t:revoked", "jti:short", b"x", SHORT_TTL)
    await store.put_entry("t:revoked", "client_id:kept", b"y", None)
    assert set(await store.entries("t:revoked")) == {"jti:short", "client_id:kept"}
    await eventually(lambda: _gone(store, "t:revoked", "jti:short"), "the short entry to expire")
    assert await store.entries("t:revoked") == {"client_id:kept": b"y"}
    await store.put_entry("t:revoked", "jti:short", b"again", LONG_TTL)  # an expired entry can come back
    assert (await store.entries("t:revoked"))["jti:short"] == b"again"


async def test_table_entries_are_apart_from_keys(store: SessionStore) -> None:
    await store.put_entry("t:revoked", "s:a", b"entry", None)
    assert await store.get("s:a") is None
    await store.put("s:a", b"key", LONG_TTL)
    assert await store.entries("t:revoked") == {"s:a": b"entry"}


@pytest.mark.parametrize("ttl", [0, -1, math.inf, math.nan])
async def test_a_table_ttl_that_is_not_a_positive_number_is_refused(store: SessionStore, ttl: float) -> None:
    with pytest.raises(ValueError):
        await store.put_entry("t:revoked", "jti:x", b"", ttl)


async def _gone(store: SessionStore, table: str, entry: str) -> bool:
    return entry not in await store.entries(table)


# --- the broadcast channel: publish, subscribe (at most once, to whoever listens now) ---


class Listener:
    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self.subscriptions = 0

    def on_message(self, message: bytes) -> None:
        self.messages.append(message)

    def on_subscribed(self) -> None:
        self.subscriptions += 1


@contextlib.asynccontextmanager
async def listening(store: SessionStore, channel: str, listener: Listener | None = None) -> AsyncIterator[Listener]:
    """``store.subscribe`` in a task, subscribed on entry, cancelled on exit."""
    listener = listener or Listener()
    task = asyncio.create_task(store.subscribe(channel, listener.on_message, listener.on_subscribed))

    async def subscribed() -> bool:
        assert not task.done(), task
        return listener.subscriptions >= 1

    await eventually(subscribed, "the subscription is confirmed")
    try:
        yield listener
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_every_subscriber_of_a_channel_receives_what_is_published(store: SessionStore) -> None:
    messages = [b"one", b"", bytes(range(256)), b"s:" + b"a" * 64, b"last"]
    async with listening(store, "chan") as first, listening(store, "chan") as second, \
            listening(store, "other") as bystander:
        for message in messages:
            await store.publish("chan", message)

        async def delivered() -> bool:
            return first.messages == messages and second.messages == messages

        await eventually(delivered, "both subscribers receive every message, in order")
        await store.publish("other", b"for the bystander")  # sent after: the earlier ones arrived first
        await eventually(lambda: _true(bystander.messages == [b"for the bystander"]), "the other channel's message")
    assert (first.subscriptions, second.subscriptions) == (1, 1)


async def test_publishing_with_no_subscriber_is_no_error(store: SessionStore) -> None:
    await store.publish("nobody-listens", b"x")


async def test_a_cancelled_subscription_receives_nothing_more(store: SessionStore) -> None:
    async with listening(store, "chan") as gone:
        pass
    async with listening(store, "chan") as current:
        await store.publish("chan", b"after")
        await eventually(lambda: _true(current.messages == [b"after"]), "the current subscriber receives it")
    assert gone.messages == []


async def test_a_subscriber_that_raises_keeps_its_subscription(store: SessionStore) -> None:
    class Failing(Listener):
        def on_message(self, message: bytes) -> None:
            super().on_message(message)
            raise RuntimeError("a bug in the subscriber")

    async with listening(store, "chan", Failing()) as failing:
        await store.publish("chan", b"first")
        await store.publish("chan", b"second")
        await eventually(lambda: _true(failing.messages == [b"first", b"second"]), "both messages, despite errors")


async def _true(value: bool) -> bool:
    return value

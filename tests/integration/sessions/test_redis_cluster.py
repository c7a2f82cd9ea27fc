"""The Redis Cluster store beyond the contract: keys spread over the masters, the broadcast
reaching every node, a master stopped and its replica taking over, and bad URLs refused.

The contract suite (``test_store_contract.py``) already runs against a real cluster; what
it cannot see is where keys live and what a failover does.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pytest

from tests.integration.sessions.test_store_contract import _true, eventually, listening
from tests.support.redis import RedisServer
from tests.support.redis_cluster import ClusterSetup
from ztproxy.config.sessions import SessionsConfig, check_store
from ztproxy.errors import SessionStoreUnavailable
from ztproxy.sessions.redis_cluster import RedisClusterStore, parse_cluster_url, table_keys
from ztproxy.sessions.store import open_store

pytestmark = pytest.mark.integration

CHANNEL = "ztproxy:test:cluster"
LONG_TTL = 600.0
BOUND = 30.0  # failover included: node timeout 1 s, then the election


@contextlib.asynccontextmanager
async def opened(cluster: ClusterSetup) -> AsyncIterator[RedisClusterStore]:
    store = open_store(SessionsConfig(store=cluster.url, store_timeout=2.0))
    assert isinstance(store, RedisClusterStore)
    try:
        yield store
    finally:
        await store.close()


def subscribed_node(cluster: ClusterSetup) -> RedisServer:
    holding = [node for node in cluster.running() if node.command("PUBSUB", "NUMSUB", CHANNEL)[1] == 1]
    assert len(holding) == 1, [node.port for node in holding]
    return holding[0]


async def test_sessions_and_their_indexes_spread_over_every_master(shared_redis_cluster: ClusterSetup) -> None:
    cluster = shared_redis_cluster
    cluster.flush()
    keys = [f"s:{n:064x}" for n in range(30)]
    async with opened(cluster) as store:
        for key in keys:
            assert await store.put(key, b"sealed", LONG_TTL, indexes=["idx:user:alice", f"idx:sid:{key}"])
        assert sorted(await store.members("idx:user:alice")) == keys
        holders = {cluster.master_of(key).port for key in keys}
        assert holders == {node.port for node in cluster.masters()}  # every master holds some
        index_node = cluster.master_of("idx:user:alice")
        assert any(cluster.master_of(key) is not index_node for key in keys)  # listed across nodes
        await store.delete(*keys[:10])  # one call, keys of several slots
        assert sorted(await store.members("idx:user:alice")) == keys[10:]


async def test_a_refused_write_takes_back_only_its_own_membership(shared_redis_cluster: ClusterSetup) -> None:
    # The interleaving a race can produce, step by step: a writer joins the index, another
    # writes the key (joining too), then the first one's write is refused and it takes back
    # its membership. The key exists: it must stay listed.
    shared_redis_cluster.flush()
    async with opened(shared_redis_cluster) as store:
        added = await store._join("s:contested", 60_000, ["idx:user:u"])
        assert [index for index, _ in added] == ["idx:user:u"]
        assert await store.put("s:contested", b"winner", LONG_TTL, indexes=["idx:user:u"])
        assert not await store.put("s:contested", b"loser", LONG_TTL, only_new=True)
        await store._leave("s:contested", added)
        assert await store.members("idx:user:u") == ["s:contested"]
        # Unchallenged, a refused write leaves nothing behind.
        mine = await store._join("s:absent", 60_000, ["idx:user:v"])
        await store._leave("s:absent", mine)
        assert shared_redis_cluster.master_of("idx:user:v").command("EXISTS", "idx:user:v") == 0


async def test_a_member_joined_but_not_yet_written_is_not_dropped(shared_redis_cluster: ClusterSetup) -> None:
    # Between a write's index add and its key write, the key looks gone: listing the index
    # then must not drop it, or the session would exist unlisted (and escape a revocation).
    shared_redis_cluster.flush()
    async with opened(shared_redis_cluster) as store:
        await store._join("s:pending", 60_000, ["idx:user:p"])
        assert await store.members("idx:user:p") == []  # not listed: it does not exist yet
        assert await store.put("s:pending", b"now", LONG_TTL)
        assert await store.members("idx:user:p") == ["s:pending"]


async def test_a_table_keeps_its_two_keys_in_one_slot(shared_redis_cluster: ClusterSetup) -> None:
    node = shared_redis_cluster.running()[0]
    for table in ("services:revoked", "t:revoked", "a:b:c"):
        slots = {node.command("CLUSTER", "KEYSLOT", key) for key in table_keys(table)}
        assert len(slots) == 1, table
    with pytest.raises(ValueError, match="braces"):
        table_keys("t:{tag}")


async def test_a_message_published_on_any_node_reaches_the_subscriber(shared_redis_cluster: ClusterSetup) -> None:
    cluster = shared_redis_cluster
    async with opened(cluster) as store, listening(store, CHANNEL) as listener:
        sent = []
        for node in cluster.running():  # each node, masters and replicas: plain PUBLISH is broadcast
            message = f"from {node.port}".encode()
            node.command("PUBLISH", CHANNEL, message)
            sent.append(message)

        async def all_arrived() -> bool:
            return sorted(listener.messages) == sorted(sent)

        await eventually(all_arrived, "the message of every node")
        async with opened(cluster) as other:
            await other.publish(CHANNEL, b"through another store")
        await eventually(lambda: _true(listener.messages[-1:] == [b"through another store"]), "the store's own publish")


async def test_a_master_stopped_its_replica_takes_over_and_nothing_is_lost(redis_cluster: ClusterSetup) -> None:
    cluster = redis_cluster
    keys = [f"s:{n:064x}" for n in range(30)]
    async with opened(cluster) as store, opened(cluster) as other, listening(other, CHANNEL) as listener:
        for key in keys:
            await store.put(key, key.encode(), LONG_TTL, indexes=["idx:user:bob"])
        # Stop the node the subscription holds, and a master (its own, if it is one): the
        # subscriber must move, and a third of the slots fail over.
        held = subscribed_node(cluster)
        masters = cluster.masters()
        victims = [held] if held in masters else [
            held, next(node for node in masters if cluster.replica_of(node) is not held)]
        for victim in victims:
            if victim in masters:
                assert victim.command("WAIT", 1, 5000) == 1  # its replica has every write so far
        for victim in victims:
            victim.stop(kill=True)
        cluster.wait_healthy()
        assert len(cluster.masters()) == 3  # a replica took over

        async def readable() -> bool:
            try:
                return [await store.get(key) for key in keys] == [key.encode() for key in keys]
            except SessionStoreUnavailable:
                return False  # the client has not yet re-read the slot map

        await eventually(readable, "every session to be readable after the failover", BOUND)
        assert sorted(await store.members("idx:user:bob")) == keys

        async def resubscribed() -> bool:
            return listener.subscriptions >= 2

        await eventually(resubscribed, "the subscriber to subscribe again on a running node", BOUND)
        assert subscribed_node(cluster).running
        await store.delete(keys[0])
        await store.publish(CHANNEL, keys[0].encode())
        await eventually(lambda: _true(keys[0].encode() in listener.messages), "the revocation after the failover")
        assert await other.get(keys[0]) is None
        assert await store.put("s:new", b"v", LONG_TTL, indexes=["idx:user:bob"])
        assert "s:new" in await other.members("idx:user:bob")


async def test_every_operation_fails_closed_while_no_node_answers(redis_cluster: ClusterSetup) -> None:
    async with opened(redis_cluster) as store:
        await store.put("s:a", b"v", LONG_TTL)
        for node in redis_cluster.nodes:
            node.stop(kill=True)
        with pytest.raises(SessionStoreUnavailable):
            await store.get("s:a")
        with pytest.raises(SessionStoreUnavailable):
            await store.put("s:b", b"v", LONG_TTL, indexes=["idx:user:u"])
        with pytest.raises(SessionStoreUnavailable):
            await store.ping()


@pytest.mark.parametrize(("url", "problem"), [
    ("redis+cluster://", "bad node address ''"),
    ("redis+cluster://127.0.0.1:6379,", "bad node address ''"),
    ("redis+cluster://127.0.0.1:99999", "bad node address"),
    ("redis+cluster://127.0.0.1:port", "bad node address"),
    ("redis+cluster://127.0.0.1:7000/1", "only database 0"),
    ("redis+cluster://127.0.0.1:7000?ssl=true", "takes no options"),
    ("redis+cluster://[::1:7000", "bad node address"),
])
def test_a_bad_cluster_url_is_refused_in_words(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match="invalid Redis Cluster URL") as caught:
        check_store(url)
    assert problem in str(caught.value)


def test_a_cluster_url_names_its_nodes_and_credentials() -> None:
    target = parse_cluster_url("redis+cluster://app:p%40ss@10.0.0.1:7000,[::1]:7001,redis-3/")
    assert target.nodes == (("10.0.0.1", 7000), ("::1", 7001), ("redis-3", 6379))
    assert (target.username, target.password) == ("app", "p@ss")
    with pytest.raises(ValueError) as caught:
        check_store("redis+cluster://app:secret@10.0.0.1:99999")
    assert "secret" not in str(caught.value)

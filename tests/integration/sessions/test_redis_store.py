"""What only the Redis store promises: bounded failure, recovery without a restart, Sentinel
failover, indexes that expire by themselves, one round trip per operation, and a dump that
leaks no session.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from tests.support.redis import RedisFactory, RedisServer, free_port
from ztproxy.config.sessions import SessionsConfig
from ztproxy.errors import SessionStoreUnavailable
from ztproxy.sessions.redis import RedisStore
from ztproxy.sessions.sealing import Ticket, seal, unseal
from ztproxy.sessions.store import SessionStore, open_store

pytestmark = pytest.mark.integration

STORE_TIMEOUT = 0.5
NOT_A_HANG = 10 * STORE_TIMEOUT  # an operation that takes longer than this hangs
RECOVERY_BOUND = 15.0
FAILOVER_WAIT = 30.0  # a store_timeout longer than any failover here, however busy the machine


@pytest.fixture
async def open_redis() -> AsyncIterator[Callable[[str], RedisStore]]:
    opened: list[RedisStore] = []

    def opener(url: str) -> RedisStore:
        store = open_store(SessionsConfig(store=url, store_timeout=STORE_TIMEOUT))
        assert isinstance(store, RedisStore)
        opened.append(store)
        return store

    yield opener
    for store in opened:
        await store.close()


def every_operation(store: SessionStore) -> list[Callable[[], Awaitable[Any]]]:
    return [
        lambda: store.get("s:a"),
        lambda: store.put("s:a", b"x", 60),
        lambda: store.put("once:a", b"x", 60, only_new=True),
        lambda: store.put("s:a", b"x", 60, indexes=["idx:user:u"]),
        lambda: store.touch("s:a", 60, indexes=()),
        lambda: store.touch("s:a", 60, indexes=["idx:user:u"]),
        lambda: store.delete("s:a", "s:b"),
        lambda: store.members("idx:user:u"),
        store.ping,
    ]


async def assert_unavailable(store: SessionStore) -> None:
    """Every operation fails with SessionStoreUnavailable (503), and none hangs."""
    results = await asyncio.gather(*(asyncio.wait_for(operation(), NOT_A_HANG)
                                     for operation in every_operation(store)), return_exceptions=True)
    for result in results:
        assert isinstance(result, SessionStoreUnavailable), result
        assert result.status == 503


async def eventually_writes(store: SessionStore, key: str, value: bytes) -> None:
    deadline = time.monotonic() + RECOVERY_BOUND
    while True:
        try:
            if await store.put(key, value, 60):
                return
        except SessionStoreUnavailable:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"the store did not accept writes again within {RECOVERY_BOUND}s")
        await asyncio.sleep(0.05)


async def test_redis_down_is_unavailable_not_a_hang(redis_server: RedisServer,
                                                    open_redis: Callable[[str], RedisStore]) -> None:
    store = open_redis(redis_server.url)
    await store.put("s:a", b"x", 60)
    redis_server.stop(kill=True)
    await assert_unavailable(store)


async def test_redis_never_reachable_is_unavailable(open_redis: Callable[[str], RedisStore]) -> None:
    await assert_unavailable(open_redis(f"redis://127.0.0.1:{free_port()}/0"))


async def test_a_hung_redis_is_unavailable_within_the_timeout(redis_server: RedisServer,
                                                              open_redis: Callable[[str], RedisStore]) -> None:
    store = open_redis(redis_server.url)
    await store.put("s:a", b"x", 60)
    redis_server.freeze()
    try:
        await assert_unavailable(store)
    finally:
        redis_server.thaw()
    # Connections cut mid-command are not reused: no answer is read for the wrong question.
    for number in range(3):
        assert await store.get("s:a") == b"x"
        assert await store.put(f"s:after{number}", b"y", 60, only_new=True) is True
        assert await store.members(f"idx:user:none{number}") == []
        assert await store.get(f"s:after{number}") == b"y"


async def test_the_same_store_works_again_after_a_redis_restart(redis_server: RedisServer,
                                                                open_redis: Callable[[str], RedisStore]) -> None:
    store = open_redis(redis_server.url)
    await store.put("s:before", b"x", 60)
    redis_server.stop(kill=True)
    with pytest.raises(SessionStoreUnavailable):
        await store.get("s:before")
    redis_server.start()
    # The pooled connections died with the old process; the first call already succeeds.
    assert await store.get("s:before") is None
    assert await store.put("s:after", b"y", 60, indexes=["idx:user:u"]) is True
    assert await store.members("idx:user:u") == ["s:after"]


async def test_pooled_connections_survive_a_restart_with_persistence(
        redis_factory: RedisFactory, open_redis: Callable[[str], RedisStore]) -> None:
    server = redis_factory.start(persist=True)
    store = open_redis(server.url)
    await asyncio.gather(*(store.put(f"s:{n}", b"x", 60) for n in range(20)))  # several pooled connections
    server.restart()  # SIGTERM: saved on shutdown, loaded at start
    assert await asyncio.gather(*(store.get(f"s:{n}") for n in range(20))) == [b"x"] * 20


async def test_sentinel_failover_then_writes_go_to_the_promoted_replica(
        redis_factory: RedisFactory, open_redis: Callable[[str], RedisStore]) -> None:
    setup = redis_factory.sentinel(replicas=1, sentinels=1)
    store = open_redis(setup.url)
    await store.put("s:before", b"replicated", 60, indexes=["idx:user:u"])
    old_master = setup.master()
    assert old_master.command("WAIT", 1, 5000) == 1  # the replica has it before the master dies
    old_master.stop(kill=True)
    with pytest.raises(SessionStoreUnavailable):
        await asyncio.wait_for(store.put("s:during", b"x", 60), NOT_A_HANG)

    new_master = setup.failover()
    assert new_master is not old_master
    await eventually_writes(store, "s:after", b"written")
    assert await store.get("s:before") == b"replicated"
    assert await store.members("idx:user:u") == ["s:before"]
    assert new_master.command("GET", "s:after") == b"written"


async def test_sentinel_switchover_with_both_nodes_up(redis_factory: RedisFactory,
                                                      open_redis: Callable[[str], RedisStore]) -> None:
    setup = redis_factory.sentinel(replicas=1, sentinels=2)
    store = open_redis(setup.url)
    await store.put("s:before", b"x", 60)
    old_master = setup.master()
    new_master = setup.failover()
    # The demoted master answers writes with READONLY; the store asks the sentinels again.
    await eventually_writes(store, "s:after", b"y")
    assert new_master.command("GET", "s:after") == b"y"
    assert old_master.running


async def test_a_write_that_meets_a_failover_waits_for_the_new_master(redis_factory: RedisFactory) -> None:
    """Sent while the master is dead and before the sentinels promote a replica, it is not
    refused: it waits for the new master (within store_timeout, generous here) and lands there."""
    setup = redis_factory.sentinel(replicas=1, sentinels=1)
    store = open_store(SessionsConfig(store=setup.url, store_timeout=FAILOVER_WAIT))
    try:
        await store.put("s:before", b"x", 60)
        old_master = setup.master()
        old_master.stop(kill=True)
        write = asyncio.create_task(store.put("s:during", b"written", 60, indexes=["idx:user:u"]))
        await asyncio.sleep(0.3)
        assert not write.done()  # no master to take it yet, and no refusal either
        new_master = await asyncio.to_thread(setup.failover)
        assert await write is True
        assert new_master.command("GET", "s:during") == b"written"
        assert await store.members("idx:user:u") == ["s:during"]
    finally:
        await store.close()


async def test_writes_through_a_switchover_all_land(redis_factory: RedisFactory) -> None:
    """Writes sent all through a switchover (the old master demoted: READONLY) each land once."""
    setup = redis_factory.sentinel(replicas=1, sentinels=2)
    store = open_store(SessionsConfig(store=setup.url, store_timeout=FAILOVER_WAIT))
    stop = asyncio.Event()
    written: list[int] = []

    async def writer() -> None:
        while not stop.is_set():
            assert await store.increment(f"counter:{len(written)}", 60) == 1  # never carried out twice
            written.append(len(written))
            await asyncio.sleep(0.01)

    try:
        writing = asyncio.create_task(writer())
        await asyncio.sleep(0.2)
        new_master = await asyncio.to_thread(setup.failover)
        count = len(written)
        await wait_for_condition(lambda: len(written) > count + 5, "writes after the switchover")
        stop.set()
        await writing  # raises what a write raised: SessionStoreUnavailable or a double count
        assert new_master.command("GET", f"counter:{len(written) - 1}") == b"1"
    finally:
        stop.set()
        await store.close()


async def wait_for_condition(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + RECOVERY_BOUND
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def test_an_index_expires_with_its_longest_lived_member(redis_server: RedisServer,
                                                              open_redis: Callable[[str], RedisStore]) -> None:
    store = open_redis(redis_server.url)
    await store.put("s:short", b"x", 0.2, indexes=["idx:user:short", "idx:user:both"])
    await store.put("s:long", b"y", 600, indexes=["idx:user:both"])
    assert 590_000 < redis_server.command("PTTL", "idx:user:both") <= 600_000
    assert 0 < redis_server.command("PTTL", "idx:user:short") <= 200
    # Nobody reads the index: it still goes away by itself with its last member.
    deadline = time.monotonic() + 5
    while redis_server.command("EXISTS", "idx:user:short"):
        assert time.monotonic() < deadline, "the index outlived its members"
        await asyncio.sleep(0.02)


async def test_a_later_write_drops_members_that_are_gone(redis_server: RedisServer,
                                                         open_redis: Callable[[str], RedisStore]) -> None:
    store = open_redis(redis_server.url)
    for number in range(5):
        await store.put(f"s:old{number}", b"x", 0.05, indexes=["idx:user:u"])
    deadline = time.monotonic() + 5
    while any(await asyncio.gather(*(store.get(f"s:old{n}") for n in range(5)))):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    await store.put("s:new", b"y", 600, indexes=["idx:user:u"])
    assert redis_server.command("ZRANGE", "idx:user:u", 0, -1) == [b"s:new"]


async def test_touch_with_indexes_extends_the_index(redis_server: RedisServer,
                                                    open_redis: Callable[[str], RedisStore]) -> None:
    store = open_redis(redis_server.url)
    await store.put("s:a", b"x", 1, indexes=["idx:user:u"])
    await store.touch("s:a", 600, indexes=["idx:user:u"])
    assert redis_server.command("PTTL", "idx:user:u") > 590_000


async def test_each_operation_is_one_round_trip(redis_server: RedisServer,
                                                open_redis: Callable[[str], RedisStore]) -> None:
    store = open_redis(redis_server.url)
    await store.put("s:warm", b"x", 60, indexes=["idx:user:warm"])  # connects, loads the script

    async def commands(operation: Awaitable[Any]) -> dict[str, int]:
        """The commands one operation sent (a script's own calls are counted by Redis too)."""
        with redis_server.client() as observer:
            observer.config_resetstat()
            await operation
            stats = observer.info("commandstats")
        return {name.removeprefix("cmdstat_"): int(entry["calls"]) for name, entry in stats.items()
                if not name.startswith(("cmdstat_config", "cmdstat_info"))}

    assert await commands(store.get("s:a")) == {"get": 1}
    assert await commands(store.put("s:a", b"x", 60)) == {"set": 1}
    assert await commands(store.put("once:a", b"x", 60, only_new=True)) == {"set": 1}
    assert await commands(store.touch("s:a", 60, indexes=())) == {"pexpire": 1}
    assert await commands(store.delete("s:a", "s:b")) == {"del": 1}
    for operation in (store.put("s:a", b"x", 60, indexes=["idx:user:u"]), store.members("idx:user:u"),
                      store.touch("s:a", 60, indexes=["idx:user:u"])):
        sent = await commands(operation)
        assert sent["evalsha"] == 1
        assert not {"ping", "script|load", "eval", "hello", "client|setinfo", "select"} & set(sent)


async def test_unix_socket_and_password(redis_factory: RedisFactory,
                                        open_redis: Callable[[str], RedisStore]) -> None:
    server = redis_factory.start(unix_socket=True, password="s3cret/pass")
    store = open_redis(f"unix://:s3cret%2Fpass@{server.unix_socket}?db=2")
    await store.put("s:a", b"over a socket", 60)
    assert await store.get("s:a") == b"over a socket"
    assert server.command("SELECT", 2) and server.command("DBSIZE") == 0  # the test's own connection is db 0
    wrong = open_redis(f"redis://:wrong@127.0.0.1:{server.port}/0")
    with pytest.raises(SessionStoreUnavailable):
        await wrong.get("s:a")


async def test_tls_with_the_servers_ca(redis_factory: RedisFactory,
                                       open_redis: Callable[[str], RedisStore]) -> None:
    server = redis_factory.start(tls=True)
    store = open_redis(server.tls_url)
    await store.put("s:a", b"over TLS", 60, indexes=["idx:user:u"])
    assert await store.get("s:a") == b"over TLS"
    # Without that CA the certificate is not trusted: refused, not sent in the clear.
    untrusting = open_redis(f"rediss://127.0.0.1:{server.tls_port}/0")
    with pytest.raises(SessionStoreUnavailable):
        await untrusting.get("s:a")
    plain_to_tls = open_redis(f"redis://127.0.0.1:{server.tls_port}/0")
    with pytest.raises(SessionStoreUnavailable):
        await plain_to_tls.get("s:a")


async def test_a_redis_dump_leaks_no_session(redis_factory: RedisFactory,
                                             open_redis: Callable[[str], RedisStore]) -> None:
    server = redis_factory.start(persist=True)
    store = open_redis(server.url)
    ticket = Ticket.new()
    plaintext = b'{"sub":"alice-7f3a","email":"alice@corp.example","refresh_token":"rt-9d8c7b6a5f4e"}'
    await store.put(ticket.store_key, seal(ticket, plaintext), 600, indexes=["idx:user:0123abcd"])

    dumped = b""
    with server.client() as client:
        for key in client.keys("*"):
            kind = client.type(key)
            if kind == b"string":
                dumped += key + b"\n" + client.get(key) + b"\n"
            elif kind == b"zset":
                dumped += key + b"\n" + b"\n".join(client.zrange(key, 0, -1)) + b"\n"
            else:
                pytest.fail(f"unexpected key type {kind!r} for {key!r}")
            dumped += client.dump(key) or b""
        client.save()
    dumped += (server.directory / "dump.rdb").read_bytes()

    # Sanity: the dump holds this session's entry; it just cannot open it.
    assert ticket.store_key.encode() in dumped
    secrets = [ticket.session_id, ticket.key, ticket.cookie_value().encode(),
               ticket.session_id.hex().encode(), ticket.key.hex().encode(),
               base64.b64encode(ticket.session_id), base64.urlsafe_b64encode(ticket.session_id).rstrip(b"="),
               b"alice", b"corp.example", b"rt-9d8c7b6a5f4e"]
    for secret in secrets:
        assert secret not in dumped
    sealed = await store.get(ticket.store_key)
    assert sealed is not None
    assert unseal(ticket, sealed) == plaintext

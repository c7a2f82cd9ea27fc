"""The Redis Cluster session store: ``redis+cluster://host:port[,host:port...]``.

Keys spread over the cluster's hash slots, so nothing that holds several keys may assume
they live on one node. What the standalone store does in one script, this one does per key:

- a value, a counter, ``ttl``, ``touch`` without indexes: one command (or the shared
  script) on the key's own node, as in :mod:`ztproxy.sessions.redis`;
- a table (a hash of entries beside a sorted set of their expiries): its two keys share a
  hash tag (``t``, ``{t}:expiries``: Redis Cluster spec, "Hash tags"), so the shared
  table script runs on one node as it does on a standalone Redis;
- an index (a sorted set of keys scored by expiry) lives on its own slot, away from its
  members. A write with indexes first adds the key to each index, then writes the key:
  from the moment the key exists it is listed, so a revocation by user, IdP session or
  device finds it. A refused write (``only_new``, ``only_existing``) takes back the
  membership it added, only if no other writer re-scored it since (each writer's score
  carries a random fraction of a millisecond, so scores tell writers apart).
  ``members`` reads the index, then the remaining life of each member on its own node,
  and lists the living. A member found gone is dropped only once its score has passed
  (a writer between its index add and its key write looks gone too); a living one whose
  score passed is re-scored. Both are conditional on the score being unchanged. Each add
  also drops members whose score passed :data:`INDEX_GRACE` ago, and an index lives
  :data:`INDEX_GRACE` past its latest member: node clocks differ, and two writers of one
  key may set its expiry and its score in different orders.

Revocations use plain ``PUBLISH``, which a cluster forwards to every node (replicas
included); the subscription holds a connection to any one node and moves to the next
known node when that one goes away. Sharded pub/sub (``SPUBLISH``, Redis 7) would pin
the channel to the nodes of one slot: for one quiet channel it saves no work and adds a
move on every failover of that slot. Failover of data nodes is followed by redis-py's
cluster client (it re-reads the slot map on ``MOVED`` and on connection errors); an
operation on a slot whose master is down fails within ``store_timeout`` (a 503) until a
replica takes over.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast
from urllib.parse import unquote, urlsplit

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import RedisClusterException, RedisError

from ztproxy.config.sessions import SessionsConfig, redact_url
from ztproxy.errors import SessionStoreUnavailable
from ztproxy.sessions.redis import _SCRIPT, HEALTH_CHECK_INTERVAL, MAX_CONNECTIONS, follow_channel
from ztproxy.sessions.redis_commands import KeyCommands, milliseconds
from ztproxy.sessions.store import check_put

T = TypeVar("T")

SCHEME = "redis+cluster://"
DEFAULT_PORT = 6379
INDEX_GRACE = 300.0  # seconds an index keeps a member past its score, and lives past its last one

# Each index on its own node. ARGV[1] names the operation; scores are ms on this node's clock.
_INDEX_SCRIPT = """
local grace = tonumber(ARGV[#ARGV])
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function unchanged(member, score)
  local current = redis.call('ZSCORE', KEYS[1], member)
  return current and tonumber(current) == tonumber(score)
end
local function settle_expiry()
  local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
  if last[2] then
    redis.call('PEXPIREAT', KEYS[1], math.ceil(tonumber(last[2])) + grace)
  end
end

local op = ARGV[1]
local now = now_ms()
if op == 'add' then
  -- ARGV: member, ttl ms, a random fraction of a ms (tells this writer's score apart)
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - grace)
  local score = now + tonumber(ARGV[3]) + tonumber(ARGV[4])
  local added = redis.call('ZADD', KEYS[1], score, ARGV[2])
  settle_expiry()
  return {added, string.format('%.17g', score)}
elseif op == 'undo' then
  -- ARGV: member, the score its add returned
  if unchanged(ARGV[2], ARGV[3]) then redis.call('ZREM', KEYS[1], ARGV[2]) end
  settle_expiry()
  return 1
elseif op == 'settle' then
  -- ARGV: triples of member, the score read, its remaining ms (-2: gone); only members
  -- whose score has passed and is unchanged are dropped (gone) or re-scored (alive).
  for i = 2, #ARGV - 1, 3 do
    local member, score, left = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
    if tonumber(score) <= now and unchanged(member, score) then
      if left == -2 then
        redis.call('ZREM', KEYS[1], member)
      elseif left > 0 then
        redis.call('ZADD', KEYS[1], now + left, member)
      end
    end
  end
  settle_expiry()
  return 1
end
return redis.error_reply('unknown operation')
"""


@dataclass(frozen=True)
class ClusterTarget:
    """What a ``redis+cluster://`` URL says (see :func:`parse_cluster_url`)."""

    nodes: tuple[tuple[str, int], ...]
    username: str | None = None
    password: str | None = None


class RedisClusterStore(KeyCommands):
    """A :class:`~ztproxy.sessions.store.SessionStore` on a Redis Cluster; see the module docstring."""

    _client: RedisCluster

    def __init__(self, config: SessionsConfig) -> None:
        target = parse_cluster_url(config.store)
        if not config.store_timeout > 0:
            raise ValueError("sessions.store_timeout must be positive with a Redis store")
        self._timeout = float(config.store_timeout)
        self._slots = asyncio.Semaphore(MAX_CONNECTIONS)
        self._target = target
        self._node_options: dict[str, Any] = {
            "username": target.username, "password": target.password,
            "socket_timeout": self._timeout, "socket_connect_timeout": self._timeout,
            "health_check_interval": HEALTH_CHECK_INTERVAL,
        }
        self._client = RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in target.nodes],
            max_connections=MAX_CONNECTIONS, **self._node_options)
        self._script = self._client.register_script(_SCRIPT)
        self._index_script = self._client.register_script(_INDEX_SCRIPT)
        self._subscribers: dict[tuple[str, int], Redis] = {}  # one client per node subscribed to
        self._next_node = 0

    @classmethod
    def check_spec(cls, url: str) -> None:
        """ValueError, in words for an operator, unless ``url`` is a usable cluster URL."""
        parse_cluster_url(url)

    async def put(self, key: str, value: bytes, ttl: float, *, only_new: bool = False,
                  only_existing: bool = False, indexes: Sequence[str] = ()) -> bool:
        check_put(ttl, only_new=only_new, only_existing=only_existing)
        ttl_ms = milliseconds(ttl)
        added = await self._join(key, ttl_ms, indexes)
        written = bool(await self._run(
            lambda: self._client.set(key, value, px=ttl_ms, nx=only_new, xx=only_existing)))
        if not written:
            await self._leave(key, added)
        return written

    async def touch(self, key: str, ttl: float, *, indexes: Sequence[str]) -> bool:
        check_put(ttl)
        ttl_ms = milliseconds(ttl)
        added = await self._join(key, ttl_ms, indexes)
        touched = bool(await self._run(lambda: self._client.pexpire(key, ttl_ms)))
        if not touched:
            await self._leave(key, added)
        return touched

    async def delete(self, *keys: str) -> None:
        if keys:
            await self._run(lambda: self._client.delete(*keys))  # split by slot by redis-py

    async def members(self, index: str) -> list[str]:
        scored = cast("list[tuple[bytes, float]]", await self._run(
            lambda: self._client.zrange(index, 0, -1, withscores=True)))
        if not scored:
            return []
        left = await self._run(lambda: self._remaining([member for member, _ in scored]))
        settle: list[Any] = []
        now_ms = time.time() * 1000  # only to skip a call; the script judges by its node's clock
        for (member, score), remaining in zip(scored, left, strict=True):
            if remaining == -2 or score <= now_ms:
                settle += [member, repr(score), remaining]
        if settle:
            await self._run(lambda: self._index_script(keys=[index], args=["settle", *settle, _grace_ms()]))
        return [member.decode() for (member, _), remaining in zip(scored, left, strict=True) if remaining != -2]

    async def publish(self, channel: str, message: bytes) -> None:
        # Plain PUBLISH: the cluster bus carries it to every node, where the subscribers are.
        # Always through one node (redis-py's default node, replaced when it fails): messages
        # sent through different nodes may arrive in another order.
        await self._run(lambda: self._client.execute_command("PUBLISH", channel, message,
                                                             target_nodes=RedisCluster.DEFAULT_NODE))

    async def subscribe(self, channel: str, on_message: Callable[[bytes], None],
                        on_subscribed: Callable[[], None]) -> None:
        await follow_channel(self._next_pubsub, channel, on_message, on_subscribed, wait=self._timeout)

    async def ping(self) -> None:
        # Every master must answer: each holds a share of the sessions.
        await self._run(lambda: self._client.execute_command("PING", target_nodes=RedisCluster.PRIMARIES))

    async def close(self) -> None:
        await self._client.aclose()
        for client in self._subscribers.values():
            await client.aclose()
        self._subscribers.clear()

    def _table_keys(self, table: str) -> list[str]:
        return table_keys(table)

    def _next_pubsub(self) -> PubSub:
        """A pubsub connection to the next node in turn: after a failure, another node is tried."""
        known = [(node.host, int(node.port)) for node in self._client.get_nodes()]
        nodes = sorted(set(known) | set(self._target.nodes))
        address = nodes[self._next_node % len(nodes)]
        self._next_node += 1
        client = self._subscribers.get(address)
        if client is None:
            client = self._subscribers[address] = Redis(host=address[0], port=address[1], **self._node_options)
        return client.pubsub()

    async def _join(self, key: str, ttl_ms: int, indexes: Sequence[str]) -> list[tuple[str, str]]:
        """Add ``key`` to each index; the (index, score) of each membership this call created."""
        async def add(index: str) -> tuple[str, str] | None:
            added, score = await self._index_script(keys=[index], args=["add", key, ttl_ms, random.random(),
                                                                         _grace_ms()])
            return (index, score.decode()) if added else None

        if not indexes:
            return []
        results = await self._run(lambda: asyncio.gather(*(add(index) for index in indexes)))
        return [result for result in results if result is not None]

    async def _leave(self, key: str, added: list[tuple[str, str]]) -> None:
        """Take back the memberships of a refused write, unless another writer re-scored them since."""
        if added:
            await self._run(lambda: asyncio.gather(*(
                self._index_script(keys=[index], args=["undo", key, score, _grace_ms()]) for index, score in added)))

    async def _remaining(self, keys: list[bytes]) -> list[int]:
        """PTTL of each key, on its own node (one pipeline, grouped by node)."""
        pipeline = self._client.pipeline(transaction=False)
        for key in keys:
            pipeline.pttl(key)
        return [int(left) for left in await pipeline.execute()]

    async def _run(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Run one operation within the store timeout; any failure is SessionStoreUnavailable."""
        try:
            async with asyncio.timeout(self._timeout):
                async with self._slots:
                    return await operation()
        except (RedisError, RedisClusterException, OSError, TimeoutError) as exc:
            # RedisClusterException (no node reachable, no slot map) is no RedisError.
            raise SessionStoreUnavailable("The session store cannot be reached.") from exc


def table_keys(table: str) -> list[str]:
    """A table's hash and its expiries, in one slot: the hash tag of the second is the whole first.

    Redis Cluster spec, "Hash tags": a key holding ``{...}`` is hashed by what the first
    braces hold, so a table name with braces of its own would split the pair.
    """
    if "{" in table or "}" in table:
        raise ValueError(f"a table name has no braces with a Redis Cluster store, got {table!r}")
    return [table, "{" + table + "}:expiries"]


def _grace_ms() -> int:
    return int(INDEX_GRACE * 1000)


def parse_cluster_url(url: str) -> ClusterTarget:
    """``redis+cluster://[[user]:password@]host[:port][,host[:port]...]``: some nodes of the cluster.

    The nodes listed are where the client first reads the slot map; it finds the others
    there. The default port is 6379; a cluster has only database 0, and no query options.
    """
    def invalid(problem: str) -> ValueError:
        return ValueError(f"invalid Redis Cluster URL {redact_url(url)!r}: {problem}")

    if not url.lower().startswith(SCHEME):
        raise invalid(f"expected {SCHEME}host:port[,host:port...]")
    rest = url[len(SCHEME):]
    netloc, _, tail = rest.partition("/")
    if "?" in netloc or "#" in netloc or tail.strip("/") not in ("", "0"):
        raise invalid("a cluster has only database 0 and takes no options: expected "
                      f"{SCHEME}host:port[,host:port...]")
    userinfo, _, hosts = netloc.rpartition("@")
    username, _, password = userinfo.partition(":")
    return ClusterTarget(nodes=tuple(_node(item, invalid) for item in hosts.split(",")),
                         username=unquote(username) or None, password=unquote(password) or None)


def _node(text: str, invalid: Callable[[str], ValueError]) -> tuple[str, int]:
    try:
        parts = urlsplit("//" + text)
        port = parts.port
    except ValueError:
        raise invalid(f"bad node address {text!r}: expected host:port, an IPv6 address as [::1]:6379") from None
    if not parts.hostname or parts.netloc != text or "@" in text or any(c.isspace() for c in text):
        raise invalid(f"bad node address {text!r}: expected host:port")
    return parts.hostname, DEFAULT_PORT if port is None else port

"""The Redis session store: standalone (``redis://``, ``rediss://``, ``unix://``) or Sentinel.

One client with one connection pool per process. The hot path is one ``GET``; a write
without indexes is one ``SET key value PX ttl [NX|XX]``. Writes that touch indexes run as
one Lua script, atomically and in one round trip; so does every operation on a table (a
hash of entries beside a sorted set of their expiries).

An index is a sorted set of keys scored by their expiry on the Redis clock. The script
that writes a member also re-checks the members whose score has passed (dropping the ones
gone, re-scoring the ones still alive) and lets the index itself expire with its
longest-lived member, so indexes never outlive what they list and never grow unbounded.
``members`` re-checks every member the same way, so it lists exactly the keys that exist.

Failures are bounded and translated: every operation runs under ``store_timeout``; a dead
pooled connection (Redis restarted) is retried once on a fresh one, so the same store
object works again as soon as Redis does; with Sentinel, each new connection asks the
sentinels for the current master, so writes follow a failover. An operation that meets a
failover in progress (the sentinels name no healthy master yet, the master they name
refuses connections, or it was demoted and answers READONLY) was never carried out, so it
is sent again every ``FAILOVER_RETRY_DELAY`` until the new master takes it or
``store_timeout`` is spent (then the usual 503).

``subscribe`` holds one connection of its own (Redis pub/sub). It notices a lost
connection by the error (Redis restarted) or by a PING left unanswered (a silent network),
then subscribes again on a new one, retrying with a capped backoff for as long as Redis is
away; every subscription, redis-py's own resubscription after a reconnect included,
confirms with a ``subscribe`` message, which is when ``on_subscribed`` runs.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.client import PubSub
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import MasterNotFoundError, Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError, RedisError
from structlog import get_logger

from ztproxy.background import stop_if_cancelled
from ztproxy.config.sessions import SessionsConfig, redact_url
from ztproxy.errors import SessionStoreUnavailable
from ztproxy.sessions.redis_commands import KeyCommands, milliseconds
from ztproxy.sessions.store import check_put

T = TypeVar("T")

DEFAULT_SENTINEL_PORT = 26379
MAX_CONNECTIONS = 64  # per process; callers beyond it wait (within store_timeout) for a free one
HEALTH_CHECK_INTERVAL = 30  # seconds idle before a pooled connection is PINGed before use
_SENTINEL_QUERY = frozenset({"sentinel_username", "sentinel_password"})
SUBSCRIBER_CONNECTIONS = 1  # held by subscribe(), beside the MAX_CONNECTIONS for operations
LISTEN_TICK = 1.0  # seconds one wait for a message lasts, at most
LIVENESS_PING_INTERVAL = 5.0  # a subscription quiet this long is PINGed; no answer: reconnect
RESUBSCRIBE_DELAYS = (0.05, 0.1, 0.2, 0.5, 1.0)  # after a failure, then 1 s until Redis is back
_LIVENESS_TOKEN = b"ztproxy-subscriber-liveness"
FAILOVER_RETRY_DELAY = 0.05  # seconds between attempts while a Sentinel failover is in progress

_log = get_logger("ztproxy.sessions")

# One script for every write that involves indexes; ARGV[1] names the operation.
# Keys outside KEYS (the members of an index) are read: fine on standalone and Sentinel
# deployments, which hold every key on one node.
_SCRIPT = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Re-check members scored up to `upto`: drop the ones gone, re-score the living by their
-- TTL; then the index lives exactly as long as its longest-lived member.
local function settle(index, now, upto)
  for _, member in ipairs(redis.call('ZRANGEBYSCORE', index, '-inf', upto)) do
    local ttl = redis.call('PTTL', member)
    if ttl == -2 then
      redis.call('ZREM', index, member)
    elseif ttl > 0 then
      redis.call('ZADD', index, now + ttl, member)
    end
  end
  local last = redis.call('ZRANGE', index, -1, -1, 'WITHSCORES')
  if last[2] then
    redis.call('PEXPIREAT', index, math.ceil(tonumber(last[2])))
  end
end

local function add_to_indexes(ttl)
  local now = now_ms()
  for i = 2, #KEYS do
    redis.call('ZADD', KEYS[i], now + ttl, KEYS[1])
    settle(KEYS[i], now, now)
  end
end

-- A table: a hash of entries (KEYS[1]) and a sorted set of their expiries (KEYS[2], '+inf'
-- for none); expired entries are dropped whenever the table is written or read.
local function prune(now)
  for _, entry in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)) do
    redis.call('HDEL', KEYS[1], entry)
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
end

local op = ARGV[1]
if op == 'put' then
  local ok
  if ARGV[4] == '' then
    ok = redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  else
    ok = redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3], ARGV[4])
  end
  if not ok then return 0 end
  add_to_indexes(tonumber(ARGV[3]))
  return 1
elseif op == 'touch' then
  if redis.call('PEXPIRE', KEYS[1], ARGV[2]) == 0 then return 0 end
  add_to_indexes(tonumber(ARGV[2]))
  return 1
elseif op == 'increment' then
  local count = redis.call('INCR', KEYS[1])
  if count == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
  return count
elseif op == 'members' then
  settle(KEYS[1], now_ms(), '+inf')
  return redis.call('ZRANGE', KEYS[1], 0, -1)
elseif op == 'entry_put' then
  local now = now_ms()
  prune(now)
  redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
  if ARGV[4] == '' then
    redis.call('ZADD', KEYS[2], '+inf', ARGV[2])
  else
    redis.call('ZADD', KEYS[2], now + tonumber(ARGV[4]), ARGV[2])
  end
  return 1
elseif op == 'entry_delete' then
  redis.call('ZREM', KEYS[2], ARGV[2])
  return redis.call('HDEL', KEYS[1], ARGV[2])
elseif op == 'entries' then
  prune(now_ms())
  return redis.call('HGETALL', KEYS[1])
end
return redis.error_reply('unknown operation')
"""


@dataclass(frozen=True)
class SentinelTarget:
    """What a ``redis+sentinel://`` URL says (see :func:`parse_sentinel_url`)."""

    sentinels: tuple[tuple[str, int], ...]
    master_name: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = None


class RedisStore(KeyCommands):
    """A :class:`~ztproxy.sessions.store.SessionStore` on Redis; see the module docstring."""

    def __init__(self, config: SessionsConfig) -> None:
        url = config.store
        self.check_spec(url)
        if not config.store_timeout > 0:
            raise ValueError("sessions.store_timeout must be positive with a Redis store")
        self._timeout = float(config.store_timeout)
        self._slots = asyncio.Semaphore(MAX_CONNECTIONS)
        connection_options: dict[str, Any] = {
            "socket_timeout": self._timeout,
            "socket_connect_timeout": self._timeout,
            # One immediate retry on a fresh connection: a pooled connection broken by a
            # Redis restart or failover costs no error. Timeouts are not retried: the
            # operation's time is spent, and a write may have happened.
            "retry": Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            "health_check_interval": HEALTH_CHECK_INTERVAL,
            "max_connections": MAX_CONNECTIONS + SUBSCRIBER_CONNECTIONS,
        }
        self._sentinel: Sentinel | None = None
        if url.lower().startswith("redis+sentinel://"):
            target = parse_sentinel_url(url)
            # Several sentinels are asked in turn within one operation's time.
            ask_timeout = self._timeout / (len(target.sentinels) + 1)
            self._sentinel = Sentinel(
                list(target.sentinels),
                sentinel_kwargs={
                    "socket_timeout": ask_timeout, "socket_connect_timeout": ask_timeout,
                    "retry": Retry(NoBackoff(), 0), "username": target.sentinel_username,
                    "password": target.sentinel_password,
                },
                **connection_options)
            self._client: Redis = self._sentinel.master_for(
                target.master_name, db=target.db, username=target.username, password=target.password)
        else:
            self._client = Redis.from_pool(ConnectionPool.from_url(url, **connection_options))
        self._script = self._client.register_script(_SCRIPT)

    @classmethod
    def check_spec(cls, url: str) -> None:
        """ValueError, in words for an operator, unless ``url`` is a usable Redis URL."""
        if url.lower().startswith("redis+sentinel://"):
            parse_sentinel_url(url)
        else:
            _check_standalone_url(url)

    async def put(self, key: str, value: bytes, ttl: float, *, only_new: bool = False,
                  only_existing: bool = False, indexes: Sequence[str] = ()) -> bool:
        check_put(ttl, only_new=only_new, only_existing=only_existing)
        ttl_ms = milliseconds(ttl)
        if not indexes:
            written = await self._run(
                lambda: self._client.set(key, value, px=ttl_ms, nx=only_new, xx=only_existing))
            return bool(written)
        mode = "NX" if only_new else "XX" if only_existing else ""
        result = await self._run(lambda: self._script(keys=[key, *indexes], args=["put", value, ttl_ms, mode]))
        return bool(result)

    async def touch(self, key: str, ttl: float, *, indexes: Sequence[str]) -> bool:
        check_put(ttl)
        ttl_ms = milliseconds(ttl)
        if not indexes:
            return bool(await self._run(lambda: self._client.pexpire(key, ttl_ms)))
        return bool(await self._run(lambda: self._script(keys=[key, *indexes], args=["touch", ttl_ms])))

    async def delete(self, *keys: str) -> None:
        if keys:
            await self._run(lambda: self._client.delete(*keys))

    async def members(self, index: str) -> list[str]:
        found = await self._run(lambda: self._script(keys=[index], args=["members"]))
        return [member.decode() for member in found]

    async def publish(self, channel: str, message: bytes) -> None:
        await self._run(lambda: self._client.publish(channel, message))

    async def subscribe(self, channel: str, on_message: Callable[[bytes], None],
                        on_subscribed: Callable[[], None]) -> None:
        await follow_channel(self._client.pubsub, channel, on_message, on_subscribed, wait=self._timeout)

    async def ping(self) -> None:
        await self._run(lambda: self._client.ping())

    async def close(self) -> None:
        await self._client.aclose()
        if self._sentinel is not None:
            await self._sentinel.aclose()

    async def _run(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Run one operation within the store timeout; any failure is SessionStoreUnavailable.

        With Sentinel, an operation that was not carried out because a failover is under way
        waits for the new master (see the module docstring).
        """
        try:
            async with asyncio.timeout(self._timeout):
                async with self._slots:
                    while True:
                        try:
                            return await operation()
                        except RedisConnectionError as exc:
                            if self._sentinel is None or not _not_carried_out(exc):
                                raise
                        await asyncio.sleep(FAILOVER_RETRY_DELAY)
        except (RedisError, OSError, TimeoutError) as exc:
            raise SessionStoreUnavailable("The session store cannot be reached.") from exc


async def follow_channel(new_pubsub: Callable[[], PubSub], channel: str, on_message: Callable[[bytes], None],
                         on_subscribed: Callable[[], None], *, wait: float) -> None:
    """``subscribe`` on a new ``new_pubsub()`` connection each time the last one failed (see the module docstring).

    ``wait``: how long subscribing, and a liveness PING, may take (the store timeout).
    """
    failures = 0
    while True:
        pubsub = new_pubsub()
        try:
            async for kind, data in _listen(pubsub, channel, wait):
                if kind == "subscribe":
                    failures = 0
                    _deliver(on_subscribed, (), channel)
                else:
                    _deliver(on_message, (data,), channel)
        except (RedisError, OSError, TimeoutError) as exc:
            # The first failure of an outage is news; its retries are not.
            (_log.warning if failures == 0 else _log.debug)(
                "subscription_lost", channel=channel, error=f"{type(exc).__name__}: {exc}")
        finally:
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                await pubsub.aclose()
        await asyncio.sleep(RESUBSCRIBE_DELAYS[min(failures, len(RESUBSCRIBE_DELAYS) - 1)])
        failures += 1


async def _listen(pubsub: PubSub, channel: str, wait: float) -> AsyncIterator[tuple[str, bytes]]:
    """Yield (``subscribe``, b"") at each (re)subscription and (``message``, data) for each message."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(wait):
        await pubsub.subscribe(channel)
    heard = pinged = loop.time()
    while True:
        stop_if_cancelled()  # redis-py may have dropped it (ztproxy.background)
        message = await pubsub.get_message(timeout=LISTEN_TICK)
        now = loop.time()
        if message is not None:
            heard = now
            if message["type"] == "subscribe":
                yield "subscribe", b""
            elif message["type"] == "message" and isinstance(message["data"], bytes):
                yield "message", message["data"]
        if pinged > heard and now - pinged > wait + LISTEN_TICK:
            raise RedisConnectionError("the subscription connection stopped answering")
        if pinged <= heard and now - heard >= LIVENESS_PING_INTERVAL:
            async with asyncio.timeout(wait):
                await pubsub.ping(_LIVENESS_TOKEN)
            pinged = now


def _not_carried_out(exc: RedisConnectionError) -> bool:
    """Whether ``exc`` proves no master ran the command, so sending it again cannot run it twice.

    The sentinels named no healthy master (nothing was sent); the connection was refused (a
    refusal happens only while connecting, and redis-py keeps the OSError as the cause); or
    the node answered READONLY, which redis-py turns into a ConnectionError raised while
    handling it (the demoted master refused the write).
    """
    return (isinstance(exc, MasterNotFoundError) or isinstance(exc.__cause__, ConnectionRefusedError)
            or isinstance(exc.__context__, ReadOnlyError))


def _deliver(callback: Callable[..., None], args: tuple[bytes, ...], channel: str) -> None:
    try:
        callback(*args)
    except Exception:  # a subscriber's bug must not end the subscription
        _log.exception("subscriber_failed", channel=channel)


def _check_standalone_url(url: str) -> None:
    def invalid(problem: str) -> ValueError:
        return ValueError(f"invalid Redis URL {redact_url(url)!r}: {problem}")

    try:
        parts = urlsplit(url)
    except ValueError as exc:  # an unclosed "[" of an IPv6 address
        raise invalid(str(exc)) from None
    scheme = parts.scheme.lower()
    try:
        parts.port  # noqa: B018 - urllib checks the port when it is read
    except ValueError:
        raise invalid("the port must be a number from 0 to 65535") from None
    if scheme in ("redis", "rediss"):
        if not parts.hostname:
            raise invalid("a host is required, e.g. redis://127.0.0.1:6379/0")
        db = parts.path.strip("/")
        if db and not db.isdigit():
            raise invalid(f"the path must be a database number, got {db!r}")
    elif scheme == "unix":
        if not parts.path:
            raise invalid("a socket path is required, e.g. unix:///run/redis/redis.sock?db=0")
    else:
        raise invalid("expected redis://, rediss://, unix:// or redis+sentinel://")
    try:
        parse_url(url)  # redis-py's own reading: the query options it understands
    except ValueError as exc:
        raise invalid(str(exc)) from None


def parse_sentinel_url(url: str) -> SentinelTarget:
    """``redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/master_name[/db]``.

    The optional query takes ``sentinel_username`` and ``sentinel_password`` for sentinels
    that require their own credentials; the userinfo is for the master and replicas.
    """
    def invalid(problem: str) -> ValueError:
        return ValueError(f"invalid Sentinel URL {redact_url(url)!r}: {problem}")

    try:
        parts = urlsplit(url)
    except ValueError:
        raise invalid("bad sentinel address: an IPv6 address is written [::1]:26379") from None
    userinfo, _, hosts = parts.netloc.rpartition("@")
    username, _, password = userinfo.partition(":")
    sentinels = tuple(_host_port(item, invalid) for item in hosts.split(","))
    path = [unquote(segment) for segment in parts.path.strip("/").split("/")]
    if not path[0]:
        raise invalid("the master name is required, e.g. redis+sentinel://127.0.0.1:26379/mymaster/0")
    if len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise invalid("the path must be /master_name or /master_name/db")
    try:
        query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError:
        raise invalid("the query is malformed") from None
    unknown = sorted(set(query) - _SENTINEL_QUERY)
    if unknown:
        raise invalid(f"unknown option {unknown[0]!r}: expected {', '.join(sorted(_SENTINEL_QUERY))}")
    return SentinelTarget(
        sentinels=sentinels,
        master_name=path[0],
        db=int(path[1]) if len(path) == 2 else 0,
        username=unquote(username) or None,
        password=unquote(password) or None,
        sentinel_username=query.get("sentinel_username", [""])[-1] or None,
        sentinel_password=query.get("sentinel_password", [""])[-1] or None,
    )


def _host_port(text: str, invalid: Callable[[str], ValueError]) -> tuple[str, int]:
    if text.startswith("["):  # an IPv6 address: [::1]:26379
        host, _, rest = text[1:].partition("]")
        port_text = rest.removeprefix(":") if rest.startswith(":") or not rest else None
    else:
        host, _, port_text = text.partition(":")
    if not host or port_text is None or any(c.isspace() or c in "/?#[]@" for c in host):
        raise invalid(f"bad sentinel address {text!r}: expected host:port")
    if not port_text:
        return host, DEFAULT_SENTINEL_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise invalid(f"bad sentinel port in {text!r}: expected a number from 1 to 65535")
    return host, int(port_text)

"""Revocation everywhere: three ``ztproxy run`` processes on one real Redis, a real IdP and upstream.

(The same on a Redis Cluster, through a failover: ``test_revocation_cluster.py``.)

A session signed in on replica A is revoked on A (admin API, or back-channel logout from
the IdP); replicas B (two workers) and C must deny it within the bound. Their cache_ttl is
set to a minute, so only the announcement can make them deny that fast. A replica that
missed the announcement still denies within its cache_ttl (default 1 s), because it then
reads the store, where the session is gone. Redis restarted: subscribers resubscribe and
the next revocation reaches them again. Open WebSockets of a revoked session close (1008).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType, web

from tests.conftest import ProxyProcess, Upstream, UpstreamFactory, free_port, wait_ready
from tests.integration.login_env import CLIENT_ID, CLIENT_SECRET
from tests.support.idp import ALICE_PASSWORD, IdpFactory
from tests.support.redis import RedisFactory, RedisServer
from tests.support.redis_cluster import ClusterSetup
from tests.support.user_agent import UserAgent
from ztproxy.demo_idp import DemoIdp, IdpClient
from ztproxy.sessions.revocation import REVOCATION_CHANNEL
from ztproxy.sessions.sealing import Ticket

pytestmark = pytest.mark.integration

BOUND = 2.0  # seconds from the revocation's answer to a denial on every other replica
ADMIN_TOKEN = "revocation-test-admin-token-0123456789abcdef"
COOKIE_SECRET = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
LONG_CACHE = "60s"
StartProcess = Callable[..., ProxyProcess]


@dataclass
class Replica:
    name: str
    process: ProxyProcess
    config_path: Path
    workers: int


@dataclass
class World:
    redis: RedisServer | ClusterSetup
    idp: DemoIdp
    upstream: Upstream
    replicas: list[Replica]
    agent: UserAgent

    @property
    def signed_in_on(self) -> Replica:
        return self.replicas[0]

    @property
    def others(self) -> list[Replica]:
        return self.replicas[1:]

    def ticket(self) -> Ticket:
        cookies = [c for c in self.agent.cookie_jar if c.key == "ztproxy_session"]
        assert len(cookies) == 1
        ticket = Ticket.parse(cookies[0].value)
        assert ticket is not None
        return ticket

    async def status(self, replica: Replica, path: str = "/app") -> int:
        # An API client's request: 200 while signed in, else 401 (no redirect to follow).
        async with self.agent.session.get(replica.process.url + path, allow_redirects=False,
                                          headers={"Accept": "application/json"}) as response:
            await response.read()
            return response.status

    async def admin(self, replica: Replica, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        async with aiohttp.ClientSession() as client:
            async with client.request(method, replica.process.admin_url + path,
                                      headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, **kwargs) as response:
                return response.status, await response.json()

    async def allowed_everywhere(self, connections: int = 8) -> None:
        """Every replica serves the session now (and caches it): several connections each, for the workers."""
        for replica in self.replicas:
            for _ in range(connections if replica.workers > 1 else 1):
                assert await self.status(replica) == 200, replica.name

    async def denied_within(self, replicas: list[Replica], since: float, bound: float = BOUND) -> dict[str, float]:
        """Poll each replica until every worker of it denies; how long after ``since`` each replica took.

        Fresh connections land on each worker of a replica; a run of denials in a row (longer
        with several workers) is the sign that all of them deny. Any 200 past the bound fails.
        """
        times: dict[str, float] = {}
        for replica in replicas:
            in_a_row, needed = 0, 12 if replica.workers > 1 else 2
            while in_a_row < needed:
                status = await self.status(replica)
                elapsed = time.monotonic() - since
                if status == 200:
                    assert elapsed < bound, f"{replica.name} still serves the revoked session after {elapsed:.2f}s"
                    in_a_row = 0
                    await asyncio.sleep(0.01)
                    continue
                assert status == 401
                in_a_row += 1
                if in_a_row == 1:
                    times[replica.name] = elapsed
        return times


def replica_yaml(port: int, issuer: str, upstream: Upstream, redis: RedisServer | ClusterSetup, token_file: Path,
                 cache_ttl: str, extra: str, routes: str = "") -> str:
    return f"""
server:
  listen: 127.0.0.1:{port}
  admin_listen: 127.0.0.1:{free_port()}
  admin_token_file: {token_file}
  shutdown_grace: 2s
identity_providers:
  - {{name: demo, issuer: '{issuer}', client_id: {CLIENT_ID}, client_secret: {CLIENT_SECRET}}}
sessions:
  store: '{redis.url}'
  cache_ttl: {cache_ttl}
  cookie_secrets: [{COOKIE_SECRET}]
{extra}
routes:
  - {{name: app, upstream: '{upstream.url}', allow: [{{email_domains: [corp.example]}}]}}
{routes}"""


async def ws_echo(request: web.Request) -> web.StreamResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for message in ws:
        if message.type is WSMsgType.TEXT:
            await ws.send_str(f"echo:{message.data}")
    return ws


async def start_world(start_idp: IdpFactory, start_upstream: UpstreamFactory, proxy_process: StartProcess,
                      redis: RedisServer | ClusterSetup, tmp_path: Path, *, cache_ttl: str = LONG_CACHE,
                      extra: str = "", workers: tuple[int, ...] = (1, 2, 1), routes: str = "") -> World:
    """``routes``: more routes (YAML list items, ``{upstream}`` for the upstream's URL) after ``app``."""
    upstream = await start_upstream(routes=[web.get("/ws", ws_echo), web.get("/{path:.*}", _hello)])
    ports = [free_port() for _ in workers]
    first = f"http://127.0.0.1:{ports[0]}"
    idp_port = free_port()
    token_file = tmp_path / "admin-token"
    token_file.write_text(ADMIN_TOKEN + "\n")
    replicas = []
    for index, (port, count) in enumerate(zip(ports, workers, strict=True)):
        text = replica_yaml(port, f"http://127.0.0.1:{idp_port}", upstream, redis, token_file, cache_ttl, extra,
                            routes.replace("{upstream}", upstream.url))
        config_path = tmp_path / f"replica-{index}.yaml"
        config_path.write_text(text)
        process = proxy_process(text, *(["--workers", str(count)] if count > 1 else []), wait=False)
        replicas.append(Replica("ABC"[index], process, config_path, count))
    # The IdP starts while the replicas do (they ask it for nothing before the first sign-in).
    idp = await start_idp(port=idp_port, clients=[IdpClient(
        client_id=CLIENT_ID, client_secret=CLIENT_SECRET, redirect_uris=(f"{first}/.ztproxy/callback",),
        backchannel_logout_uri=f"{first}/.ztproxy/backchannel-logout")])
    for replica in replicas:
        wait_ready(replica.process.admin_url, replica.process.process)
    # Every worker follows the announcements before the test revokes anything.
    await until(lambda: subscribers(redis) == sum(workers), "every worker to subscribe")
    agent = UserAgent(new_connection_per_request=True)
    world = World(redis, idp, upstream, replicas, agent)
    final = await agent.login(first + "/app", "alice", ALICE_PASSWORD)
    assert final.status == 200, final.text[:300]
    return world


async def _hello(request: web.Request) -> web.Response:
    return web.Response(text="hello")


WorldFactory = Callable[..., Awaitable[World]]


@pytest.fixture
def start_replicas(start_idp: IdpFactory, start_upstream: UpstreamFactory, proxy_process: StartProcess,
                   redis_factory: RedisFactory, tmp_path: Path) -> WorldFactory:
    """``await start_replicas(redis=None, **options)``: a world on ``redis`` (default: a new server)."""
    async def start(*, redis: RedisServer | None = None, **options: Any) -> World:
        return await start_world(start_idp, start_upstream, proxy_process, redis or redis_factory.start(), tmp_path,
                                 **options)

    return start


def subscribers(redis: RedisServer | ClusterSetup) -> int:
    nodes = redis.running() if isinstance(redis, ClusterSetup) else [redis]
    return sum(int(node.command("PUBSUB", "NUMSUB", REVOCATION_CHANNEL)[1]) for node in nodes)


async def until(condition: Callable[[], bool | Awaitable[bool]], what: str, bound: float = 20.0) -> None:
    deadline = time.monotonic() + bound
    while True:
        result = condition()
        if await result if isinstance(result, Awaitable) else result:
            return
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def test_a_revocation_on_one_replica_is_denied_by_the_others_within_the_bound(
        start_replicas: WorldFactory) -> None:
    world = await start_replicas()
    async with world.agent:
        await world.allowed_everywhere()
        handle = world.ticket().public_id
        status, listed = await world.admin(world.signed_in_on, "GET", "/admin/sessions?user=alice")
        assert status == 200 and [s["handle"] for s in listed["sessions"]] == [handle]
        forwarded = len(world.upstream.requests)

        status, body = await world.admin(world.signed_in_on, "DELETE", f"/admin/sessions/{handle}")
        revoked_at = time.monotonic()
        assert (status, body) == (200, {"revoked": 1, "handle": handle})
        times = await world.denied_within(world.replicas, revoked_at)
        print(f"denied after revocation (s): {times}")
        assert len(world.upstream.requests) == forwarded  # nothing revoked reached the app
        assert world.redis.command("EXISTS", world.ticket().store_key) == 0  # authoritative in the store


async def test_a_back_channel_logout_on_one_replica_reaches_the_others(start_replicas: WorldFactory) -> None:
    world = await start_replicas()
    async with world.agent:
        await world.allowed_everywhere()
        await world.idp.end_sessions("alice")  # the IdP posts a logout token to replica A
        ended_at = time.monotonic()
        await world.denied_within(world.replicas, ended_at)


async def test_a_replica_that_missed_the_announcement_denies_within_its_cache_ttl(
        start_replicas: WorldFactory) -> None:
    world = await start_replicas(cache_ttl="1s")
    redis = world.redis
    async with world.agent:
        await world.allowed_everywhere()
        # Deleted with no announcement at all: what every replica sees when pub/sub lost the message.
        assert redis.command("DEL", world.ticket().store_key) == 1
        deleted_at = time.monotonic()
        times = await world.denied_within(world.replicas, deleted_at, bound=1.0 + 0.5)
        print(f"denied without an announcement (s): {times}")


async def test_after_redis_restarts_the_subscribers_resubscribe(start_replicas: WorldFactory,
                                                                 redis_factory: RedisFactory) -> None:
    redis = redis_factory.start(persist=True)
    world = await start_replicas(redis=redis)
    async with world.agent:
        await world.allowed_everywhere()
        redis.restart()  # saved on the way down, loaded on the way up: the session survives
        await until(lambda: subscribers(redis) == 4, "every worker to subscribe again")
        await world.allowed_everywhere()  # cached again, for a minute
        status, body = await world.admin(world.signed_in_on, "POST", "/admin/sessions/revoke",
                                         json={"user": "alice"})
        revoked_at = time.monotonic()
        assert (status, body) == (200, {"revoked": 1, "user": "alice"})
        await world.denied_within(world.replicas, revoked_at)


async def test_open_websockets_of_a_revoked_session_close_with_1008(start_replicas: WorldFactory) -> None:
    world = await start_replicas()
    async with world.agent:
        sockets = [await world.agent.session.ws_connect(replica.process.url + "/ws") for replica in world.replicas]
        try:
            for ws in sockets:
                await ws.send_str("hi")
                assert (await ws.receive(timeout=5)).data == "echo:hi"
            status, _ = await world.admin(world.signed_in_on, "DELETE", f"/admin/sessions/{world.ticket().public_id}")
            revoked_at = time.monotonic()
            assert status == 200
            for ws in sockets:
                message = await ws.receive(timeout=BOUND)
                assert message.type is WSMsgType.CLOSE, message
                assert (message.data, message.extra) == (1008, "session ended")
            assert time.monotonic() - revoked_at < BOUND
        finally:
            for ws in sockets:
                await ws.close()
        # A new socket with the revoked cookie is refused at the handshake.
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await world.agent.session.ws_connect(world.others[0].process.url + "/ws",
                                                 headers={"Accept": "application/json"})
        assert refused.value.status == 401

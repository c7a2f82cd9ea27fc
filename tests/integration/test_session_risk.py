"""Session risk across replicas: a copied cookie, an owner who moves, clients on different /24 prefixes.

Two ``ztproxy run`` processes share a real Redis; users sign in at the real IdP (npm
oidc-provider) on replica A. Clients connect from loopback addresses in different /24
prefixes (127.0.1.1, 127.0.2.1), so the proxy sees them as different networks.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import orjson
import pytest
from aiohttp import web
from yarl import URL

from tests.conftest import ProxyProcess, Upstream, UpstreamFactory, free_port, wait_ready
from tests.integration.login_env import CLIENT_ID, CLIENT_SECRET
from tests.support.idp import ALICE_PASSWORD, IdpFactory
from tests.support.redis import RedisFactory, RedisServer
from tests.support.user_agent import UserAgent
from ztproxy.demo_idp import IdpClient
from ztproxy.sessions.sealing import Ticket

pytestmark = pytest.mark.integration

HOME, AWAY, THIEF = "127.0.1.1", "127.0.2.1", "127.0.3.1"
CACHE_TTL = 1.0
COOKIE_SECRET = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
JSON = {"Accept": "application/json"}


@dataclass
class World:
    redis: RedisServer
    upstream: Upstream
    replicas: list[ProxyProcess]
    owner: UserAgent  # signed in from HOME on replica A

    def ticket(self) -> Ticket:
        ticket = Ticket.parse(next(c.value for c in self.owner.cookie_jar if c.key == "ztproxy_session"))
        assert ticket is not None
        return ticket

    def session_exists(self) -> bool:
        return bool(self.redis.command("EXISTS", self.ticket().store_key))

    def copy_cookie(self, local_address: str) -> UserAgent:
        """Another client with the owner's cookie (and its User-Agent), connecting from ``local_address``."""
        jar = aiohttp.CookieJar(unsafe=True)
        for cookie in self.owner.cookie_jar:
            jar.update_cookies({cookie.key: cookie.value}, URL(self.replicas[0].url))
        return UserAgent(local_address=local_address, cookie_jar=jar)


async def call(agent: UserAgent, replica: ProxyProcess, path: str = "/app/") -> tuple[int, str, dict[str, str]]:
    async with agent.session.get(replica.url + path, headers=JSON, allow_redirects=False) as response:
        return response.status, await response.text(), dict(response.headers)


def replica_yaml(port: int, issuer: str, upstream: Upstream, redis: RedisServer) -> str:
    return f"""
server:
  listen: 127.0.0.1:{port}
  admin_listen: 127.0.0.1:{free_port()}
  shutdown_grace: 1s
identity_providers:
  - name: demo
    issuer: '{issuer}'
    client_id: {CLIENT_ID}
    client_secret: {CLIENT_SECRET}
    scopes: [openid, email, profile, groups]
sessions:
  store: '{redis.url}'
  cache_ttl: {CACHE_TTL}s
  cookie_secrets: [{COOKIE_SECRET}]
routes:
  - {{name: app, path: /app, upstream: '{upstream.url}', allow: [{{email_domains: [corp.example]}}]}}
  - {{name: mfa, path: /mfa, upstream: '{upstream.url}', allow: [{{email_domains: [corp.example], mfa: true}}]}}
"""


async def _hello(request: web.Request) -> web.Response:
    return web.Response(text="hello")


@pytest.fixture
async def world(start_idp: IdpFactory, start_upstream: UpstreamFactory, proxy_process: object,
                redis_factory: RedisFactory) -> AsyncIterator[World]:
    redis = redis_factory.start()
    upstream = await start_upstream(routes=[web.get("/{path:.*}", _hello)])
    ports = [free_port(), free_port()]
    idp_port = free_port()
    replicas = [proxy_process(replica_yaml(port, f"http://127.0.0.1:{idp_port}", upstream, redis),  # type: ignore[operator]
                              wait=False) for port in ports]
    first = replicas[0].url
    await start_idp(port=idp_port, clients=[IdpClient(
        client_id=CLIENT_ID, client_secret=CLIENT_SECRET, redirect_uris=(f"{first}/.ztproxy/callback",))])
    for replica in replicas:
        wait_ready(replica.admin_url, replica.process)
    owner = UserAgent(local_address=HOME)
    try:
        final = await owner.login(first + "/app/", "alice", ALICE_PASSWORD)
        assert final.status == 200, final.text[:300]
        yield World(redis, upstream, replicas, owner)
    finally:
        await owner.close()


async def me(agent: UserAgent, replica: ProxyProcess) -> dict[str, object]:
    status, text, _ = await call(agent, replica, "/.ztproxy/me")
    assert status == 200
    data = orjson.loads(text)
    assert isinstance(data, dict)
    return data


async def test_a_cookie_used_concurrently_from_another_prefix_is_refused_from_the_detection_point_on(
        world: World) -> None:
    a, b = world.replicas
    for replica in (a, b, a, b):
        assert (await call(world.owner, replica))[0] == 200
    async with world.copy_cookie(THIEF) as thief:
        # The copied cookie's first request, from another network: a move, logged on this route.
        assert (await call(thief, b))[0] == 200
        first_theft = time.monotonic()
        # The owner keeps browsing from home; once its replica sees the move (cache_ttl), the
        # use is concurrent: that request is the detection point, and gets the 403 page.
        while True:
            status, text, _ = await call(world.owner, a)
            if status != 200:
                break
            assert time.monotonic() - first_theft < CACHE_TTL + 1.0, "the concurrent use went unnoticed"
            await asyncio.sleep(0.05)
        assert status == 403, text
        assert "used from another network at the same time" in text
        assert not world.session_exists()  # revoked in the store: every replica
        # From the detection point on, nobody gets in with that cookie, on any replica.
        for agent, replica in ((thief, a), (thief, b), (world.owner, b), (world.owner, a)):
            assert (await call(agent, replica))[0] == 401
    # The decision event names the signal and the action (the log is flushed every 100 ms).
    deadline = time.monotonic() + 3.0
    while not any('"risk_signal":"concurrent-use"' in line and '"risk_action":"revoke"' in line
                  and '"decision":"deny"' in line for line in a.log_lines()):
        assert time.monotonic() < deadline, "no decision event names the signal and the action"
        await asyncio.sleep(0.05)
    async with aiohttp.ClientSession() as client:
        async with client.get(a.admin_url + "/metrics") as response:
            metrics = await response.text()
    assert 'ztproxy_risk_signals_total{action="revoke",signal="concurrent-use"} 1.0' in metrics
    assert 'ztproxy_risk_detection_seconds_count{signal="concurrent-use"} 1.0' in metrics


async def test_the_owner_moving_is_never_revoked(world: World) -> None:
    a, b = world.replicas
    # Another address in the same /24: nothing at all.
    async with world.copy_cookie("127.0.1.2") as same_network:
        assert (await call(same_network, a))[0] == 200
        assert (await call(same_network, b))[0] == 200
        risk = (await me(same_network, a))["risk"]
        assert (risk["level"], risk["signals"], risk["network"]) == ("low", [], "127.0.1.0/24")  # type: ignore[index]
    # The owner moves to another network, and stays there: every request of it is served on plain routes.
    async with world.copy_cookie(AWAY) as moved:
        deadline = time.monotonic() + 2 * CACHE_TTL + 0.5
        while time.monotonic() < deadline:
            for replica in (a, b):
                assert (await call(moved, replica))[0] == 200
            await asyncio.sleep(0.1)
        # A route that asks for MFA asks this session to sign in again, saying why (RFC 9470).
        status, _, headers = await call(moved, a, "/mfa/")
        assert status == 401
        challenge = headers["WWW-Authenticate"]
        assert 'error="insufficient_user_authentication"' in challenge and "moved to another network" in challenge
        risk = (await me(moved, b))["risk"]
        assert risk["level"] == "medium"  # type: ignore[index]
        assert risk["network"] == "127.0.2.0/24" and risk["signed_in_from"] == "127.0.1.0/24"  # type: ignore[index]
        assert [s["signal"] for s in risk["signals"]] == ["network-changed"]  # type: ignore[index]
    assert world.session_exists()

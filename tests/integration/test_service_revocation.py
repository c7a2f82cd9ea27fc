"""Revoking services: two ``ztproxy run`` processes (one of them with two workers) on one real Redis.

Tokens are client-credentials JWTs from the real oidc-provider. A client, a service or a
token revoked on replica A is refused by every worker of both replicas within the bound,
tokens already verified and cached included, and so are tokens issued afterwards; a lifted
revocation lets them in again. The replicas' cache_ttl is a minute, so only the
announcement can make them refuse that fast; a replica that missed it (the table written
into Redis directly) refuses within its cache_ttl. Revocations survive a proxy restart and
a Redis restart. ``ztproxy services`` drives the same API. The app stops though the table's
follower loses a cancellation (as it did, now and then, when SIGTERM came just after a Redis restart).
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import WSMsgType, web

from tests.conftest import REPO, ProxyProcess, Upstream, UpstreamFactory, free_port, wait_ready
from tests.integration.test_revocation import ws_echo
from tests.support.idp import IdpFactory
from tests.support.lost_cancellation import URL_VARIABLE, LosesACancellation
from tests.support.redis import RedisFactory, RedisServer
from ztproxy.app import build_app
from ztproxy.config import load_text
from ztproxy.demo_idp import DemoIdp, IdpClient, IdpResource, IdpService
from ztproxy.service_revocations import CHANNEL, GENERATION_KEY, TABLE

pytestmark = pytest.mark.integration

BOUND = 2.0  # seconds from the revocation's answer to a refusal by every worker of every replica
ADMIN_TOKEN = "service-revocation-admin-token-0123456789abcdef"
ORDERS = "https://orders.corp.example"
BILLING = IdpService("billing", "billing-secret-for-tests-0123456789", ("orders.read",))
REPORTS = IdpService("reports", "reports-secret-for-tests-0123456789", ("orders.read",))
STOPPED_WITHIN = 10.0  # seconds for the app's cleanup; it takes background.RECANCEL_AFTER (0.5 s) or so
StartProcess = Callable[..., ProxyProcess]


@dataclass
class Replica:
    name: str
    process: ProxyProcess
    workers: int


@dataclass
class World:
    redis: RedisServer
    idp: DemoIdp
    upstream: Upstream
    replicas: list[Replica]
    config_text: list[str]
    token_file: Path

    async def call(self, replica: Replica, token: str) -> tuple[int, dict[str, str], Any]:
        # A connection per request: with two workers, requests land on both.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as client:
            async with client.get(replica.process.url + "/orders/list",
                                  headers={"Authorization": f"Bearer {token}"}) as response:
                body = await response.text()
                return response.status, dict(response.headers), json.loads(body) if body.startswith("{") else body

    async def admin(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        async with aiohttp.ClientSession() as client:
            async with client.request(method, self.replicas[0].process.admin_url + path, json=body,
                                      headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as response:
                return response.status, await response.json()

    async def allowed_everywhere(self, token: str) -> None:
        for replica in self.replicas:
            for _ in range(8 if replica.workers > 1 else 1):
                status, _, body = await self.call(replica, token)
                assert status == 200, (replica.name, body)

    async def refused_within(self, token: str, since: float, bound: float = BOUND) -> str:
        """Poll every replica until all its workers refuse ``token``; the decision reason they give."""
        reason = ""
        for replica in self.replicas:
            in_a_row, needed = 0, 12 if replica.workers > 1 else 2
            while in_a_row < needed:
                status, headers, body = await self.call(replica, token)
                elapsed = time.monotonic() - since
                if status == 200:
                    assert elapsed < bound, f"{replica.name} still lets the token in after {elapsed:.2f}s"
                    in_a_row = 0
                    await asyncio.sleep(0.01)
                    continue
                assert status == 401, body
                assert headers["WWW-Authenticate"].startswith('Bearer realm="ztproxy", error="invalid_token"')
                assert body["error"] == "invalid-token"
                reason = headers["WWW-Authenticate"]
                in_a_row += 1
        return reason


def replica_yaml(port: int, idp: DemoIdp, upstream: Upstream, redis: RedisServer, token_file: Path,
                 cache_ttl: str) -> str:
    return f"""
server:
  listen: 127.0.0.1:{port}
  admin_listen: 127.0.0.1:{free_port()}
  admin_token_file: {token_file}
  shutdown_grace: 2s
identity_providers:
  - {{name: demo, issuer: '{idp.issuer}', client_id: ztproxy, client_secret: proxy-client-secret-for-tests}}
sessions:
  store: '{redis.url}'
  cache_ttl: {cache_ttl}
  cookie_secrets: [0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef]
routes:
  - {{name: orders, path: /orders, upstream: '{upstream.url}', audience: '{ORDERS}',
     allow: [{{clients: [billing, reports], scopes: [orders.read]}}]}}
"""


async def echo(request: web.Request) -> web.StreamResponse:
    return web.json_response({"path": request.raw_path})


@pytest.fixture
async def start_world(start_idp: IdpFactory, start_upstream: UpstreamFactory, proxy_process: StartProcess,
                      redis_factory: RedisFactory, tmp_path: Path) -> Callable[..., Any]:
    async def start(*, cache_ttl: str = "60s", persist: bool = False) -> World:
        redis = redis_factory.start(persist=persist)
        upstream = await start_upstream(routes=[web.get("/orders/ws", ws_echo), web.route("*", "/{path:.*}", echo)])
        idp = await start_idp(clients=[IdpClient(client_id="ztproxy", client_secret="proxy-client-secret-for-tests",
                                                 redirect_uris=("http://127.0.0.1/.ztproxy/callback",))],
                              services=[BILLING, REPORTS], resources=[IdpResource(ORDERS, ("orders.read",))])
        token_file = tmp_path / "admin-token"
        token_file.write_text(ADMIN_TOKEN + "\n")
        replicas, texts = [], []
        for name, workers in (("A", 1), ("B", 2)):
            text = replica_yaml(free_port(), idp, upstream, redis, token_file, cache_ttl)
            process = proxy_process(text, *(["--workers", str(workers)] if workers > 1 else []), wait=False)
            replicas.append(Replica(name, process, workers))
            texts.append(text)
        for replica in replicas:
            wait_ready(replica.process.admin_url, replica.process.process)
        await until(lambda: int(redis.command("PUBSUB", "NUMSUB", CHANNEL)[1]) == 3, "every worker to subscribe")
        return World(redis, idp, upstream, replicas, texts, token_file)

    return start


async def until(condition: Callable[[], bool], what: str, bound: float = 20.0) -> None:
    deadline = time.monotonic() + bound
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def test_a_revoked_client_is_refused_everywhere_before_and_after_and_until_lifted(
        start_world: Callable[..., Any]) -> None:
    world: World = await start_world()
    before = await world.idp.client_credentials(BILLING, ORDERS, ["orders.read"])
    other = await world.idp.client_credentials(REPORTS, ORDERS, ["orders.read"])
    await world.allowed_everywhere(before)  # verified, and cached by every worker
    forwarded = len(world.upstream.requests)

    status, body = await world.admin("POST", "/admin/services/revoke", {"client_id": "billing"})
    revoked_at = time.monotonic()
    assert status == 200 and body["revoked"]["kind"] == "client_id" and body["revoked"]["expires_at"] is None
    challenge = await world.refused_within(before, revoked_at)
    assert "revoked" in challenge
    assert len(world.upstream.requests) == forwarded  # nothing revoked reached the app
    after = await world.idp.client_credentials(BILLING, ORDERS, ["orders.read"])  # issued after the revocation
    await world.refused_within(after, time.monotonic(), bound=0)
    await world.allowed_everywhere(other)  # another client is untouched

    status, body = await world.admin("GET", "/admin/services/revocations")
    assert status == 200 and [(r["kind"], r["value"]) for r in body["revocations"]] == [("client_id", "billing")]
    assert world.redis.command("HEXISTS", TABLE, "client_id:billing") == 1  # the store is the authority

    status, body = await world.admin("POST", "/admin/services/lift", {"client_id": "billing"})
    assert (status, body["lifted"]) == (200, 1)
    lifted_at = time.monotonic()
    for replica in world.replicas:
        for _ in range(12 if replica.workers > 1 else 2):
            while (await world.call(replica, after))[0] != 200:
                assert time.monotonic() - lifted_at < BOUND, f"{replica.name} still refuses after the lift"
                await asyncio.sleep(0.01)
    assert await world.admin("POST", "/admin/services/lift", {"client_id": "billing"}) == (
        404, {"error": "not-found", "message": "No revocation of client_id 'billing' is in force."})

    # The decision event says why, and names the service, never the token. Log lines leave in
    # batches (logging.flush_interval): they reach the file a moment later.
    deadline = time.monotonic() + 5
    while True:
        events = [json.loads(line) for line in world.replicas[0].process.log_lines() if line.startswith("{")]
        refused = [e for e in events if e.get("event") == "decision" and e["reasons"] == ["service-revoked"]]
        if refused or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    assert refused, "no decision event for the refusal"
    assert refused[0]["caller"] == "service" and refused[0]["client_id"] == "billing"
    assert refused[0]["scopes"] == ["orders.read"] and refused[0]["decision"] == "deny"
    assert all(before not in line and after not in line for line in world.replicas[0].process.log_lines())


async def test_a_revoked_services_open_websockets_close_on_every_replica(start_world: Callable[..., Any]) -> None:
    world: World = await start_world()
    billing = await world.idp.client_credentials(BILLING, ORDERS, ["orders.read"])
    reports = await world.idp.client_credentials(REPORTS, ORDERS, ["orders.read"])
    async with aiohttp.ClientSession() as client:
        async def open_socket(replica: Replica, token: str) -> aiohttp.ClientWebSocketResponse:
            ws = await client.ws_connect(replica.process.url + "/orders/ws",
                                         headers={"Authorization": f"Bearer {token}"})
            await ws.send_str("hi")
            assert (await ws.receive(timeout=10)).data == "echo:hi"
            return ws

        revoked = [await open_socket(replica, billing)
                   for replica in world.replicas for _ in range(replica.workers * 2)]
        untouched = [await open_socket(replica, reports) for replica in world.replicas]
        status, _ = await world.admin("POST", "/admin/services/revoke", {"client_id": "billing"})
        revoked_at = time.monotonic()
        assert status == 200
        for ws in revoked:
            message = await ws.receive(timeout=BOUND * 5)
            assert message.type is WSMsgType.CLOSE, message
            assert (message.data, message.extra) == (1008, "access revoked")
        assert time.monotonic() - revoked_at < BOUND
        for ws in untouched:  # another client's sockets go on
            await ws.send_str("still")
            assert (await ws.receive(timeout=10)).data == "echo:still"
            await ws.close()


async def test_a_revoked_token_is_refused_and_the_revocation_ends_with_the_token(
        start_world: Callable[..., Any]) -> None:
    world: World = await start_world()
    token = await world.idp.client_credentials(BILLING, ORDERS, ["orders.read"])
    sibling = await world.idp.client_credentials(BILLING, ORDERS, ["orders.read"])
    await world.allowed_everywhere(token)
    claims = jwt.decode(token, options={"verify_signature": False})
    status, body = await world.admin("POST", "/admin/services/revoke", {"jti": claims["jti"], "exp": claims["exp"]})
    revoked_at = time.monotonic()
    assert status == 200 and body["revoked"]["kind"] == "jti"
    challenge = await world.refused_within(token, revoked_at)
    assert "revoked" in challenge
    await world.allowed_everywhere(sibling)  # the same client's other tokens are fine
    # Kept in the store until the token's exp, not longer.
    left = float(world.redis.command("ZSCORE", TABLE + ":expiries", f"jti:{claims['jti']}"))
    assert abs(left / 1000 - claims["exp"]) < 5
    # Without exp the token is revoked for a documented bound; an exp in the past is refused.
    status, body = await world.admin("POST", "/admin/services/revoke", {"jti": "unknown-jti"})
    assert status == 200 and body["revoked"]["expires_at"] is not None
    status, body = await world.admin("POST", "/admin/services/revoke", {"jti": "x", "exp": 1})
    assert status == 400
    status, body = await world.admin("POST", "/admin/services/revoke", {"client_id": "a", "service": "spiffe://x/y"})
    assert status == 400 and "exactly one" in body["message"]


async def test_a_replica_that_missed_the_announcement_refuses_within_its_cache_ttl(
        start_world: Callable[..., Any]) -> None:
    world: World = await start_world(cache_ttl="1s")
    token = await world.idp.client_credentials(BILLING, ORDERS, ["orders.read"])
    await world.allowed_everywhere(token)
    # What a writer leaves when its announcement is lost: the table and the generation, no message.
    entry = json.dumps({"revoked_at": time.time(), "expires_at": None})
    world.redis.command("HSET", TABLE, "client_id:billing", entry)
    world.redis.command("ZADD", TABLE + ":expiries", "+inf", "client_id:billing")
    world.redis.command("SET", GENERATION_KEY, "missed")
    await world.refused_within(token, time.monotonic(), bound=1.0 + 0.5)


async def test_revocations_survive_restarts_and_the_cli_drives_them(
        start_world: Callable[..., Any], proxy_process: StartProcess, tmp_path: Path) -> None:
    world: World = await start_world(persist=True)
    token = await world.idp.client_credentials(REPORTS, ORDERS, ["orders.read"])
    await world.allowed_everywhere(token)
    config = tmp_path / "replica-a.yaml"
    config.write_text(world.config_text[0])

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "ztproxy", "services", *args, "-c", str(config)],
                              capture_output=True, text=True, cwd=REPO, timeout=30, check=False)

    done = cli("revoke", "--client-id", "reports")
    assert done.returncode == 0 and done.stdout.strip() == "revoked client_id reports until lifted", done.stderr
    await world.refused_within(token, time.monotonic())
    listed = cli("list")
    assert listed.returncode == 0 and listed.stdout.startswith("client_id  reports  since "), listed.stdout
    assert cli("revoke", "--service", "not-a-spiffe-id").returncode == 1
    assert cli("revoke", "--client-id", "x", "--exp", "1").returncode == 2  # --exp goes with --jti

    world.redis.restart()  # saved on the way down, loaded on the way up
    await until(lambda: int(world.redis.command("PUBSUB", "NUMSUB", CHANNEL)[1]) == 3, "every worker to resubscribe")
    first = world.replicas[0].process.process
    first.send_signal(signal.SIGTERM)
    try:  # in a thread: the test's own servers (the upstream) keep answering meanwhile
        await asyncio.to_thread(first.wait, 15)
    except subprocess.TimeoutExpired:
        raise AssertionError("replica A did not stop within 15 s of SIGTERM:\n"
                             + "\n".join(world.replicas[0].process.log_lines()[-30:])) from None
    again = Replica("A again", proxy_process(world.config_text[0]), 1)  # the same ports, once ready
    assert (await world.call(again, token))[0] == 401  # read at start, before the first request

    assert cli("lift", "--client-id", "reports").returncode == 0
    lifted_at = time.monotonic()
    while (await world.call(again, token))[0] != 200:
        assert time.monotonic() - lifted_at < BOUND
        await asyncio.sleep(0.01)
    assert cli("list").stdout.strip() == "no revocations"


async def test_the_app_stops_though_the_followers_read_loses_its_cancellation(
        redis_factory: RedisFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGTERM after a Redis restart met the follower reconnecting inside a read, where redis-py's
    ``asyncio.wait_for`` (Python 3.11) dropped the cancellation: the follower went on, and the
    process never stopped. Here the read that the app's cleanup cancels surely loses it."""
    redis = redis_factory.start()
    monkeypatch.setenv(URL_VARIABLE, redis.url)
    monkeypatch.setattr(LosesACancellation, "opened", [])
    # The follower reads the generation every 0.1 s (cache_ttl 0); with Redis frozen, a read
    # waits store_timeout, so the cleanup surely cancels one that is under way.
    runner = web.AppRunner(build_app(load_text("""
sessions: {store: 'tests.support.lost_cancellation:LosesACancellation', cache_ttl: 0s, store_timeout: 5s}
token_issuers: [{name: corp, issuer: 'http://127.0.0.1:9'}]
routes:
  - {name: orders, path: /orders, upstream: 'http://127.0.0.1:9', token_issuers: [corp], allow: [{clients: [billing]}]}
""")))
    await runner.setup()
    stores = LosesACancellation.opened
    try:
        await until(lambda: sum(store.reads for store in stores) > 1, "the follower to read the table")
        redis.freeze()
        reads = sum(store.reads for store in stores)
        await until(lambda: sum(store.reads for store in stores) > reads, "a read that Redis will not answer")
        async with asyncio.timeout(STOPPED_WITHIN):
            await runner.cleanup()
    finally:
        redis.thaw()
    assert sum(store.lost for store in stores) == 1  # the follower's read did lose the cancellation

"""Sign-in across worker processes: shared generated secrets, sessions in Redis, one key set."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from tests.conftest import UpstreamFactory, free_port
from tests.integration.login_env import CLIENT_ID, CLIENT_SECRET
from tests.integration.test_process import StartProcess, run_cli
from tests.support.idp import ALICE_PASSWORD, IdpFactory
from tests.support.redis import RedisFactory
from tests.support.user_agent import UserAgent
from ztproxy.demo_idp import IdpClient
from ztproxy.verify import Verifier


def config_yaml(port: int, issuer: str, upstream: str, store: str) -> str:
    # No cookie secret and no assertion keys: the supervisor makes them once for all workers.
    return f"""
server: {{listen: 127.0.0.1:{port}, admin_listen: 127.0.0.1:{free_port()}}}
identity_providers:
  - {{name: demo, issuer: '{issuer}', client_id: {CLIENT_ID}, client_secret: {CLIENT_SECRET}}}
sessions: {{store: '{store}'}}
routes:
  - {{name: app, upstream: '{upstream}', allow: [{{email_domains: [corp.example]}}]}}
"""


async def test_two_workers_share_sign_in_and_signing_keys(start_idp: IdpFactory, start_upstream: UpstreamFactory,
                                                          proxy_process: StartProcess,
                                                          redis_factory: RedisFactory) -> None:
    upstream = await start_upstream()
    redis = redis_factory.start()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    idp = await start_idp(clients=[IdpClient(client_id=CLIENT_ID, client_secret=CLIENT_SECRET,
                                             redirect_uris=(f"{url}/.ztproxy/callback",))])
    proxy = proxy_process(config_yaml(port, idp.issuer, upstream.url, redis.url), "--workers", "2")
    verifier = Verifier(issuer=url, audience=url, jwks_url=f"{url}/.well-known/ztproxy/jwks.json")
    for _ in range(3):  # each sign-in's hops land on whichever worker accepts the connection
        async with UserAgent(new_connection_per_request=True) as agent:
            final = await agent.login(url + "/page", "alice", ALICE_PASSWORD)
            assert final.status == 200, final.text[:300]
            for _ in range(6):
                seen = {k.lower(): v for k, v in await _headers(agent, url)}
                assert (await verifier.averify(seen["x-ztproxy-jwt-assertion"])).subject == "alice"
    assert "cookie_secret_generated" in proxy.log_path.read_text()


async def _headers(agent: UserAgent, url: str) -> list[tuple[str, str]]:
    async with agent.session.get(url + "/headers", headers={"Accept": "application/json"}) as response:
        assert response.status == 200
        data = await response.json()
    return [(k, v) for k, v in data["headers"]]


async def test_several_workers_with_in_memory_sessions_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ztproxy.yaml"
    path.write_text(config_yaml(free_port(), "https://idp.corp.example", "http://127.0.0.1:9", "memory"))
    result = run_cli("run", "-c", str(path), "--workers", "2")
    assert result.returncode == 2
    assert "sessions.store is memory" in result.stderr and "Use a Redis store" in result.stderr


async def test_the_admin_listener_publishes_the_same_keys(start_upstream: UpstreamFactory,
                                                          proxy_process: StartProcess) -> None:
    upstream = await start_upstream()
    port = free_port()
    proxy = proxy_process(f"""
server: {{listen: 127.0.0.1:{port}, admin_listen: 127.0.0.1:{free_port()}}}
routes:
  - {{name: app, upstream: '{upstream.url}', allow: [{{public: true}}]}}
""", "--workers", "2")
    async with aiohttp.ClientSession() as client:
        async with client.get(proxy.admin_url + "/.well-known/ztproxy/jwks.json") as response:
            admin = await response.json()
        for _ in range(4):
            async with client.get(proxy.url + "/.well-known/ztproxy/jwks.json",
                                  headers={"Connection": "close"}) as response:
                assert await response.json() == admin

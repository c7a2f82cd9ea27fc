"""Cross-site WebSocket hijacking: an upgrade from a page of another origin is refused (403).

A browser sends the session cookie with a WebSocket upgrade whatever page opens it (sibling
hosts under ``cookie_domain`` are the same site, so SameSite=Lax does not help) and applies no
CORS to it. The proxy admits a browser's upgrade only from the route's own origin (as the
client addressed it) or one listed in ``websocket_origins``; a client that sends no Origin is
not a browser and is judged by policy alone. Browser-like clients here send Origin as
browsers do; the decision log must name the refusal.
"""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import ProxyProcess, UpstreamFactory, free_port
from tests.integration.test_process import StartProcess

pytestmark = pytest.mark.integration


async def ws_echo(request: web.Request) -> web.StreamResponse:
    socket = web.WebSocketResponse()
    await socket.prepare(request)
    async for message in socket:
        await socket.send_str(f"echo:{message.data}")
    return socket


@pytest.fixture
async def proxy(start_upstream: UpstreamFactory, proxy_process: StartProcess) -> tuple[ProxyProcess, int]:
    upstream = await start_upstream(routes=[web.get("/ws", ws_echo)])
    port = free_port()
    proxy = proxy_process(f"""
server: {{listen: 127.0.0.1:{port}, admin_listen: 127.0.0.1:{free_port()}}}
logging: {{flush_interval: 0s}}
routes:
  - name: app
    host: app.corp.test
    upstream: {upstream.url}
    allow: [{{public: true}}]
  - name: wiki
    host: wiki.corp.test
    upstream: {upstream.url}
    allow: [{{public: true}}]
  - name: board
    host: board.corp.test
    upstream: {upstream.url}
    allow: [{{public: true}}]
    websocket_origins: [https://dashboard.corp.test, "http://wiki.corp.test:{port}"]
  - name: private
    host: private.corp.test
    upstream: {upstream.url}
    allow: [{{source_cidrs: [192.0.2.0/24]}}]
""")
    return proxy, port


async def upgrade(proxy: ProxyProcess, host: str, origin: str | list[str] | None) -> int:
    """Open a socket to ``host`` as a page of ``origin`` would (None: a client that is no browser)."""
    headers: list[tuple[str, str]] = [("Host", host)]
    for value in [origin] if isinstance(origin, str) else origin or []:
        headers.append(("Origin", value))
    async with aiohttp.ClientSession() as client:
        try:
            async with client.ws_connect(f"{proxy.url}/ws", headers=headers) as socket:
                await socket.send_str("hi")
                assert (await socket.receive(timeout=5)).data == "echo:hi"
                return 101
        except aiohttp.WSServerHandshakeError as refused:
            return refused.status


def decisions(proxy: ProxyProcess) -> list[dict[str, object]]:
    events = [json.loads(line) for line in proxy.log_lines() if line.startswith("{")]
    return [event for event in events if event.get("event") == "decision"]


async def test_own_origin_and_listed_origins_open_sockets(proxy: tuple[ProxyProcess, int]) -> None:
    process, port = proxy
    assert await upgrade(process, f"app.corp.test:{port}", f"http://app.corp.test:{port}") == 101
    assert await upgrade(process, f"APP.corp.test:{port}", f"http://app.CORP.test:{port}") == 101  # case
    assert await upgrade(process, f"board.corp.test:{port}", "https://dashboard.corp.test") == 101
    assert await upgrade(process, f"board.corp.test:{port}", f"http://wiki.corp.test:{port}") == 101


@pytest.mark.parametrize("origin", [
    "http://wiki.corp.test:{port}",  # a sibling host under the same cookie domain: the same site
    "http://evil.example",
    "https://app.corp.test:{port}",  # the right host but another scheme
    "http://app.corp.test:1",  # another port
    "null",  # a sandboxed frame or a file: page, from anywhere
    "http://app.corp.test:{port}/path",  # not an origin
    "",
    ["http://app.corp.test:{port}", "http://evil.example"],  # which page? refused
])
async def test_other_origins_are_refused_and_logged(proxy: tuple[ProxyProcess, int], origin: str | list[str]) -> None:
    process, port = proxy
    origin = [value.format(port=port) for value in origin] if isinstance(origin, list) else origin.format(port=port)
    assert await upgrade(process, f"app.corp.test:{port}", origin) == 403
    # Listing a different origin for another route opens nothing here.
    assert await upgrade(process, f"app.corp.test:{port}", "https://dashboard.corp.test") == 403
    await asyncio.sleep(0.2)  # the event leaves with the next log flush
    refused = [event for event in decisions(process) if event["route"] == "app"]
    assert refused and all(event["decision"] == "deny" and event["reasons"] == ["origin-not-allowed"]
                           for event in refused), refused


async def test_clients_without_origin_are_judged_by_policy_alone(proxy: tuple[ProxyProcess, int]) -> None:
    process, port = proxy
    assert await upgrade(process, f"app.corp.test:{port}", None) == 101
    assert await upgrade(process, f"private.corp.test:{port}", None) == 403  # the policy's refusal
    await asyncio.sleep(0.2)
    private = [event for event in decisions(process) if event["route"] == "private"]
    assert private[-1]["reasons"] == ["source-not-allowed"]


async def test_refusal_page_says_why(proxy: tuple[ProxyProcess, int]) -> None:
    process, port = proxy
    headers = {"Host": f"app.corp.test:{port}", "Origin": "http://evil.example", "Upgrade": "websocket",
               "Connection": "Upgrade", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
               "Sec-WebSocket-Version": "13", "Accept": "text/html"}
    async with aiohttp.ClientSession() as client, client.get(f"{process.url}/ws", headers=headers) as response:
        assert response.status == 403
        assert "pages of another site" in await response.text()


async def test_behind_a_trusted_proxy_the_origin_is_the_one_the_client_used(start_upstream: UpstreamFactory,
                                                                           proxy_process: StartProcess) -> None:
    upstream = await start_upstream(routes=[web.get("/ws", ws_echo)])
    process = proxy_process(f"""
server: {{listen: 127.0.0.1:{free_port()}, admin_listen: 127.0.0.1:{free_port()}, trusted_proxies: [127.0.0.0/8]}}
routes:
  - name: app
    host: app.corp.test
    upstream: {upstream.url}
    allow: [{{public: true}}]
""")
    async def through_lb(origin: str) -> int:
        headers = {"Host": "app.corp.test", "Origin": origin, "X-Forwarded-Proto": "https",
                   "X-Forwarded-Host": "app.corp.test"}
        async with aiohttp.ClientSession() as client:
            try:
                async with client.ws_connect(f"{process.url}/ws", headers=headers):
                    return 101
            except aiohttp.WSServerHandshakeError as refused:
                return refused.status

    assert await through_lb("https://app.corp.test") == 101
    assert await through_lb("http://app.corp.test") == 403

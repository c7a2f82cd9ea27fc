"""WebSockets through the proxy against a real upstream WebSocket server."""

from __future__ import annotations

import base64
import os

import aiohttp
import pytest
from aiohttp import WSMsgType, web

from tests.conftest import ProxyFactory, UpstreamFactory, proxy_yaml
from tests.support.scripted_upstream import ScriptedUpstream, UpstreamConnection
from tests.unit.test_metrics import changes, scrape

pytestmark = pytest.mark.integration


async def ws_echo(request: web.Request) -> web.StreamResponse:
    ws = web.WebSocketResponse(protocols=("chat.v2", "chat.v1"), autoping=False)
    await ws.prepare(request)
    async for message in ws:
        if message.type is WSMsgType.TEXT:
            if message.data == "close-please":
                await ws.close(code=4001, message=b"bye from upstream")
                break
            await ws.send_str(f"echo:{message.data}")
        elif message.type is WSMsgType.BINARY:
            await ws.send_bytes(message.data[::-1])
        elif message.type is WSMsgType.PING:
            await ws.pong(message.data)
            await ws.send_str(f"saw-ping:{message.data.decode()}")
    return ws


async def plain(request: web.Request) -> web.StreamResponse:
    return web.Response(text="not a websocket", status=404)


@pytest.fixture
async def proxy_url(start_upstream: UpstreamFactory, start_proxy: ProxyFactory) -> str:
    upstream = await start_upstream(routes=[web.get("/ws", ws_echo), web.get("/plain", plain)])
    proxy = await start_proxy(proxy_yaml(upstream.url))
    return proxy.url


async def test_text_binary_ping_pong(proxy_url: str, client: aiohttp.ClientSession) -> None:
    async with client.ws_connect(f"{proxy_url}/ws", autoping=False) as ws:
        await ws.send_str("hello")
        assert (await ws.receive(timeout=5)).data == "echo:hello"
        await ws.send_bytes(b"\x00\x01\x02")
        message = await ws.receive(timeout=5)
        assert message.type is WSMsgType.BINARY
        assert message.data == b"\x02\x01\x00"
        await ws.ping(b"p1")
        received = {(await ws.receive(timeout=5)).type for _ in range(2)}
        assert received == {WSMsgType.PONG, WSMsgType.TEXT}


async def test_upstream_close_code_reaches_client(proxy_url: str, client: aiohttp.ClientSession) -> None:
    async with client.ws_connect(f"{proxy_url}/ws") as ws:
        await ws.send_str("close-please")
        message = await ws.receive(timeout=5)
        assert message.type is WSMsgType.CLOSE
        assert message.data == 4001
        assert message.extra == "bye from upstream"


async def test_client_close_code_reaches_upstream(start_upstream: UpstreamFactory, start_proxy: ProxyFactory,
                                                  client: aiohttp.ClientSession) -> None:
    seen: list[int | None] = []

    async def record_close(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for _ in ws:
            pass
        seen.append(ws.close_code)
        return ws

    upstream = await start_upstream(routes=[web.get("/ws", record_close)])
    proxy = await start_proxy(proxy_yaml(upstream.url))
    async with client.ws_connect(f"{proxy.url}/ws") as ws:
        await ws.close(code=4002, message=b"client leaving")
    for _ in range(50):
        if seen:
            break
        import asyncio

        await asyncio.sleep(0.05)
    assert seen == [4002]


async def test_subprotocol_negotiated_with_upstream(proxy_url: str, client: aiohttp.ClientSession) -> None:
    async with client.ws_connect(f"{proxy_url}/ws", protocols=("chat.v1", "other")) as ws:
        assert ws.protocol == "chat.v1"
    async with client.ws_connect(f"{proxy_url}/ws", protocols=("unknown",)) as ws:
        assert ws.protocol is None


def upgrade_headers() -> dict[str, str]:
    """A client's WebSocket handshake, sent as a plain request so the answer's body can be read."""
    return {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode()}


async def test_the_apps_refusal_of_an_upgrade_reaches_the_client(start_upstream: UpstreamFactory,
                                                                 start_proxy: ProxyFactory,
                                                                 client: aiohttp.ClientSession) -> None:
    async def forbidden(request: web.Request) -> web.StreamResponse:
        return web.json_response({"error": "not your kernel"}, status=403, headers={"X-App": "jupyter"})

    upstream = await start_upstream(routes=[web.get("/ws", forbidden), web.get("/plain", plain)])
    proxy = await start_proxy(proxy_yaml(upstream.url))
    before = scrape()
    async with client.get(f"{proxy.url}/ws", headers=upgrade_headers()) as response:
        assert response.status == 403
        assert await response.json() == {"error": "not your kernel"}
        assert response.headers["X-App"] == "jupyter"
        assert response.headers["X-Request-Id"]
    # A WebSocket client sees the status too, not a 502 of the proxy's.
    with pytest.raises(aiohttp.WSServerHandshakeError) as error:
        async with client.ws_connect(f"{proxy.url}/plain"):
            pass
    assert error.value.status == 404
    delta = changes(before, scrape())
    assert delta("ztproxy_requests_total", route="app", status="403", decision="allow") == 1
    assert delta("ztproxy_requests_total", route="app", status="404", decision="allow") == 1
    assert delta("ztproxy_requests_total", route="app", status="502") == 0


async def test_a_redirect_answering_an_upgrade_is_passed_on_not_followed(start_upstream: UpstreamFactory,
                                                                         start_proxy: ProxyFactory,
                                                                         client: aiohttp.ClientSession) -> None:
    elsewhere = await start_upstream(routes=[web.get("/ws", ws_echo)])

    async def to_login(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(f"{elsewhere.url}/ws")

    upstream = await start_upstream(routes=[web.get("/ws", to_login)])
    proxy = await start_proxy(proxy_yaml(upstream.url))
    async with client.get(f"{proxy.url}/ws", headers=upgrade_headers(), allow_redirects=False) as response:
        assert response.status == 302
        assert response.headers["Location"] == f"{elsewhere.url}/ws"
    assert elsewhere.requests == []  # the proxy itself never went there


async def test_a_handshake_the_app_gets_wrong_is_a_502(client: aiohttp.ClientSession,
                                                       start_proxy: ProxyFactory) -> None:
    async def wrong_accept(conn: UpstreamConnection) -> None:
        await conn.read_request()
        await conn.send(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                        b"Sec-WebSocket-Accept: bm90IHRoZSByaWdodCBvbmU=\r\n\r\n")
        await conn.wait_for_client_close()

    upstream = await ScriptedUpstream(wrong_accept).start()
    try:
        proxy = await start_proxy(proxy_yaml(f"http://127.0.0.1:{upstream.port}"))
        async with client.get(f"{proxy.url}/ws", headers=upgrade_headers()) as response:
            assert response.status == 502
            assert "WebSocket handshake" in await response.text()
    finally:
        await upstream.close()


async def test_websocket_on_denied_route_is_refused(start_upstream: UpstreamFactory, start_proxy: ProxyFactory,
                                                    client: aiohttp.ClientSession) -> None:
    upstream = await start_upstream(routes=[web.get("/ws", ws_echo)])
    proxy = await start_proxy(proxy_yaml(upstream.url, allow="[]"))
    with pytest.raises(aiohttp.WSServerHandshakeError) as error:
        async with client.ws_connect(f"{proxy.url}/ws"):
            pass
    assert error.value.status == 403
    assert upstream.requests == []

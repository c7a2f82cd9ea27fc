"""WebSockets through the proxy against a real upstream WebSocket server."""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp import WSMsgType, web

from tests.conftest import ProxyFactory, UpstreamFactory, proxy_yaml

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


async def test_upstream_refusing_upgrade_gives_502(proxy_url: str, client: aiohttp.ClientSession) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as error:
        async with client.ws_connect(f"{proxy_url}/plain"):
            pass
    assert error.value.status == 502


async def test_websocket_on_denied_route_is_refused(start_upstream: UpstreamFactory, start_proxy: ProxyFactory,
                                                    client: aiohttp.ClientSession) -> None:
    upstream = await start_upstream(routes=[web.get("/ws", ws_echo)])
    proxy = await start_proxy(proxy_yaml(upstream.url, allow="[]"))
    with pytest.raises(aiohttp.WSServerHandshakeError) as error:
        async with client.ws_connect(f"{proxy.url}/ws"):
            pass
    assert error.value.status == 403
    assert upstream.requests == []

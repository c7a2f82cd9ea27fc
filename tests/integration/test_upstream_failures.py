"""Upstream down, slow or abandoned: clear pages, bounded waits, no stack traces, no leaks."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import ProxyFactory, UpstreamFactory, free_port, proxy_yaml, raw_exchange

pytestmark = pytest.mark.integration


async def test_upstream_down_gives_502_page_with_request_id(start_proxy: ProxyFactory,
                                                            client: aiohttp.ClientSession) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    proxy = await start_proxy(proxy_yaml(dead))
    async with client.get(f"{proxy.url}/", headers={"Accept": "text/html"}) as response:
        assert response.status == 502
        assert response.content_type == "text/html"
        page = await response.text()
    assert response.headers["X-Request-Id"] in page
    assert "Traceback" not in page
    assert dead.split("//")[1] not in page  # never leak internal addresses
    async with client.get(f"{proxy.url}/", headers={"Accept": "application/json"}) as response:
        assert response.status == 502
        data = await response.json()
    assert data["error"] == "upstream-unavailable"
    assert data["request_id"] == response.headers["X-Request-Id"]


async def test_xhr_gets_json_error(start_proxy: ProxyFactory, client: aiohttp.ClientSession) -> None:
    proxy = await start_proxy(proxy_yaml(f"http://127.0.0.1:{free_port()}"))
    async with client.get(f"{proxy.url}/", headers={"X-Requested-With": "XMLHttpRequest"}) as response:
        assert response.status == 502
        assert (await response.json())["error"] == "upstream-unavailable"


async def test_slow_upstream_gives_504_within_read_timeout(start_upstream: UpstreamFactory,
                                                           start_proxy: ProxyFactory,
                                                           client: aiohttp.ClientSession) -> None:
    async def hang(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(30)
        return web.Response(text="too late")

    upstream = await start_upstream(hang)
    yaml_text = proxy_yaml(upstream.url).replace("    allow:", "    read_timeout: 500ms\n    allow:")
    proxy = await start_proxy(yaml_text)
    started = time.monotonic()
    async with client.get(f"{proxy.url}/", headers={"Accept": "application/json"}) as response:
        assert response.status == 504
        assert (await response.json())["error"] == "upstream-timeout"
    assert time.monotonic() - started < 10


async def test_client_disconnect_cancels_upstream_request(start_upstream: UpstreamFactory,
                                                          start_proxy: ProxyFactory) -> None:
    cancelled = asyncio.Event()
    entered = asyncio.Event()

    async def hang(request: web.Request) -> web.StreamResponse:
        entered.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return web.Response(text="late")

    upstream = await start_upstream(hang)
    proxy = await start_proxy(proxy_yaml(upstream.url))
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    await asyncio.wait_for(entered.wait(), 5)
    writer.close()
    # The proxy drops the upstream connection, which cancels the upstream's handler.
    await asyncio.wait_for(cancelled.wait(), 5)


def truncating(*, declared: int, sent: int) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """An upstream that announces ``declared`` body bytes, sends ``sent``, then drops the connection."""

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": str(declared)})
        await response.prepare(request)
        await response.write(b"x" * sent)
        assert request.transport is not None
        request.transport.abort()
        return response

    return handler


async def test_upstream_dying_mid_body_aborts_client_connection(start_upstream: UpstreamFactory,
                                                                start_proxy: ProxyFactory) -> None:
    upstream = await start_upstream(truncating(declared=100_000, sent=1000))
    proxy = await start_proxy(proxy_yaml(upstream.url))
    data, closed = await raw_exchange(proxy.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert closed
    assert len(body) < 100000  # the client can tell the body is incomplete


async def test_upstream_that_never_accepts_gives_504_within_connect_timeout(
        start_proxy: ProxyFactory, client: aiohttp.ClientSession) -> None:
    import socket

    # A listener whose accept queue is full: the kernel drops further SYNs, so a connect hangs.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(("127.0.0.1", port))
        fillers.append(filler)
    try:
        yaml_text = proxy_yaml(f"http://127.0.0.1:{port}").replace(
            "    allow:", "    connect_timeout: 300ms\n    allow:")
        proxy = await start_proxy(yaml_text)
        started = time.monotonic()
        async with client.get(f"{proxy.url}/", headers={"Accept": "application/json"}) as response:
            assert response.status == 504
            assert (await response.json())["error"] == "upstream-timeout"
        assert time.monotonic() - started < 5
    finally:
        for sock in fillers:
            sock.close()
        listener.close()


async def test_small_body_cut_short_by_the_upstream_gives_502(start_upstream: UpstreamFactory,
                                                              start_proxy: ProxyFactory,
                                                              client: aiohttp.ClientSession) -> None:
    upstream = await start_upstream(truncating(declared=1000, sent=10))
    proxy = await start_proxy(proxy_yaml(upstream.url))
    # Small bodies are read whole before anything is sent: a broken one is still a clean 502.
    async with client.get(f"{proxy.url}/", headers={"Accept": "application/json"}) as response:
        assert response.status == 502
        assert (await response.json())["error"] == "upstream-unavailable"


async def test_websocket_handshake_to_a_hung_upstream_gives_504(start_proxy: ProxyFactory,
                                                                client: aiohttp.ClientSession) -> None:
    from tests.support.faults import HungUpstream

    upstream = HungUpstream()  # accepts the connection, never answers the upgrade
    await upstream.start()
    try:
        yaml_text = proxy_yaml(upstream.url).replace("    allow:", "    read_timeout: 500ms\n    allow:")
        proxy = await start_proxy(yaml_text)
        started = time.monotonic()
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await client.ws_connect(f"{proxy.url}/ws")
        assert refused.value.status == 504
        assert time.monotonic() - started < 10  # bounded by the route's timeouts, not forever
    finally:
        await upstream.close()

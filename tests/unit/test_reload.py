"""LiveApp: one configuration per request, the atomic swap, retiring the old app, and what survives."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import UpstreamFactory, free_port, proxy_yaml
from ztproxy.app import build_app
from ztproxy.config import load_text
from ztproxy.config.schema import Config
from ztproxy.listener import ProxyRunner
from ztproxy.reload import LiveApp, keep_listener, restart_only
from ztproxy.sessions.memory import MemoryStore
from ztproxy.upstream import UPSTREAM

CLOSED = "[{source_cidrs: [192.0.2.0/24]}]"
Serve = Callable[[LiveApp, Config], Awaitable[str]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    runners: list[web.AppRunner] = []

    async def start(live: LiveApp, config: Config) -> str:
        runner = ProxyRunner(live.front_app(), config)
        await runner.setup()
        host, _, port = config.server.listen.rpartition(":")
        await web.TCPSite(runner, host, int(port)).start()
        runners.append(runner)
        return f"http://{host}:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()


async def status_of(url: str) -> int:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        await response.read()
        return response.status


async def test_a_reload_changes_what_new_requests_see(start_upstream: UpstreamFactory, serve: Serve) -> None:
    upstream = await start_upstream()
    port = free_port()
    first = load_text(proxy_yaml(upstream.url, port=port))
    live = LiveApp(first, build_app)
    url = await serve(live, first)
    assert await status_of(url + "/x") == 200
    closed = load_text(proxy_yaml(upstream.url, port=port, allow=CLOSED))
    assert await live.reload(closed)
    assert live.config.routes[0].allow != first.routes[0].allow
    assert await status_of(url + "/x") == 403
    assert await live.reload(first)
    assert await status_of(url + "/x") == 200


async def test_a_request_keeps_its_configuration_and_the_old_app_closes_after_it(
        start_upstream: UpstreamFactory, serve: Serve) -> None:
    release = asyncio.Event()
    arrived = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        arrived.set()
        await release.wait()
        return web.Response(text="done")

    upstream = await start_upstream(slow)
    port = free_port()
    first = load_text(proxy_yaml(upstream.url, port=port))
    live = LiveApp(first, build_app)
    url = await serve(live, first)
    in_flight = asyncio.create_task(status_of(url + "/slow"))
    await asyncio.wait_for(arrived.wait(), 5)
    old_client = live.app[UPSTREAM].session
    assert await live.reload(load_text(proxy_yaml(upstream.url, port=port, allow=CLOSED)))
    assert await status_of(url + "/other") == 403  # new requests: the new configuration
    assert not old_client.closed  # the old app still serves the request it started
    release.set()
    assert await asyncio.wait_for(in_flight, 5) == 200  # served to the end by the old configuration
    for _ in range(100):
        if old_client.closed:
            break
        await asyncio.sleep(0.02)
    assert old_client.closed  # then its resources close
    assert not live.app[UPSTREAM].session.closed


async def test_an_open_websocket_keeps_its_configuration_until_it_closes(
        start_upstream: UpstreamFactory, serve: Serve) -> None:
    async def echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for message in ws:
            await ws.send_str(message.data)
        return ws

    upstream = await start_upstream(routes=[web.get("/ws", echo)])
    port = free_port()
    first = load_text(proxy_yaml(upstream.url, port=port))
    live = LiveApp(first, build_app)
    url = await serve(live, first)
    async with aiohttp.ClientSession() as session, session.ws_connect(url + "/ws") as ws:
        old_client = live.app[UPSTREAM].session
        assert await live.reload(load_text(proxy_yaml(upstream.url, port=port, allow=CLOSED)))
        assert await status_of(url + "/ws") == 403  # new requests: the new configuration
        await ws.send_str("still here")
        assert await ws.receive_str(timeout=5) == "still here"  # the open one is not dropped
        assert not old_client.closed
    for _ in range(100):
        if old_client.closed:
            break
        await asyncio.sleep(0.02)
    assert old_client.closed  # closed with the WebSocket, not before


async def test_a_retired_configuration_is_freed_once_closed(
        start_upstream: UpstreamFactory, serve: Serve, collector_off: None) -> None:
    upstream = await start_upstream()
    port = free_port()
    first = load_text(proxy_yaml(upstream.url, port=port))
    live = LiveApp(first, build_app)
    url = await serve(live, first)
    retired: list[weakref.ref[web.Application]] = []
    for allow, status in ((CLOSED, 403), ("[{public: true}]", 200), (CLOSED, 403)):
        retired.append(weakref.ref(live.app))
        assert await live.reload(load_text(proxy_yaml(upstream.url, port=port, allow=allow)))
        assert await status_of(url + "/x") == status
    await live.settled()
    # Apps are reference cycles: with the automatic collector off, only LiveApp's own pass frees them.
    assert [index for index, app in enumerate(retired) if app() is not None] == []
    assert weakref.ref(live.app)() is not None


async def test_a_configuration_that_cannot_start_keeps_the_running_one(
        start_upstream: UpstreamFactory, serve: Serve) -> None:
    upstream = await start_upstream()
    port = free_port()
    first = load_text(proxy_yaml(upstream.url, port=port))
    live = LiveApp(first, build_app)
    url = await serve(live, first)

    def broken(config: Config) -> web.Application:
        if config is not first:
            raise RuntimeError("provider cannot be built")
        return build_app(config)

    live._build = broken
    closed = load_text(proxy_yaml(upstream.url, port=port, allow=CLOSED))
    assert not await live.reload(closed)
    assert live.config is first
    assert await status_of(url + "/x") == 200


def test_listener_settings_need_a_restart_and_keep_their_running_values() -> None:
    running = load_text(proxy_yaml("http://127.0.0.1:1", port=free_port()))
    new = load_text(proxy_yaml("http://127.0.0.1:2", port=free_port(),
                               server="  limits: {keepalive_timeout: 3s, max_request_body: 1KiB}"))
    assert restart_only(running, new) == ["server.listen", "server.limits.keepalive_timeout"]
    kept = keep_listener(running, new)
    assert kept.server.listen == running.server.listen
    assert kept.server.limits.keepalive_timeout == running.server.limits.keepalive_timeout
    assert kept.server.limits.max_request_body == 1024  # not a listener setting: applied
    assert str(kept.routes[0].upstream).startswith("http://127.0.0.1:2")
    assert restart_only(running, kept) == []


def test_http2_settings_need_a_restart() -> None:
    running = load_text(proxy_yaml("http://127.0.0.1:1", port=(port := free_port())))
    new = load_text(proxy_yaml("http://127.0.0.1:1", port=port, server="  http2: {cleartext: true}"))
    assert restart_only(running, new) == ["server.http2"]
    assert keep_listener(running, new).server.http2 == running.server.http2


async def test_the_memory_store_is_shared_by_every_configuration_that_names_it() -> None:
    first = load_text(proxy_yaml("http://127.0.0.1:1", port=free_port())).sessions
    second = first.model_copy(update={"idle_timeout": 60.0})  # what a reload that changes sessions makes
    assert first is not second and first.store == second.store == "memory"
    store = MemoryStore.open(first)
    await store.put("session", b"sealed", 60)
    reloaded = MemoryStore.open(second)  # the new configuration opens before the old one closes
    assert reloaded is store
    await store.close()
    assert await reloaded.get("session") == b"sealed"
    await reloaded.close()
    fresh = MemoryStore.open(second)  # the last user closed it: a new, empty store
    assert fresh is not store and await fresh.get("session") is None
    await fresh.close()


async def test_a_memory_store_dropped_without_closing_is_not_handed_to_the_next_opener() -> None:
    config = load_text(proxy_yaml("http://127.0.0.1:1", port=free_port())).sessions
    dropped = MemoryStore.open(config)
    await dropped.put("leftover", b"x", 60)
    del dropped
    gc.collect()
    fresh = MemoryStore.open(config)
    assert await fresh.get("leftover") is None
    await fresh.close()

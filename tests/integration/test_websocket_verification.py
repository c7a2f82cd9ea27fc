"""An open WebSocket is verified for as long as it stays open, not only at its handshake.

Real IdP (its refresh is the re-verification), real upstream WebSocket, ztproxy in process
with ``cache_ttl: 1s`` and ``refresh_interval: 1s``. Only the socket is used after the
handshake: what it sees comes from the proxy opening the socket's session again by itself.
Each test checks that a socket the change does not concern stays open.
"""

from __future__ import annotations

import time

import aiohttp
import pytest
from aiohttp import WSMsgType, web

from tests.conftest import ProxyFactory, UpstreamFactory
from tests.integration.login_env import LoginWorld, start_world
from tests.integration.test_revocation import ws_echo
from tests.support.idp import ALICE_PASSWORD, BOB_PASSWORD, BOB_TOTP_SECRET, IdpFactory
from tests.support.user_agent import UserAgent

pytestmark = pytest.mark.integration

WITHIN = 20.0  # seconds: generous for a busy machine (the proxy rechecks every second)


async def echo(request: web.Request) -> web.StreamResponse:
    return web.json_response({"path": request.raw_path})


async def world_with(start_idp: IdpFactory, start_proxy: ProxyFactory, start_upstream: UpstreamFactory,
                     sessions: str = "", risk: str = "") -> LoginWorld:
    return await start_world(
        start_idp, start_proxy, start_upstream, risk=risk,
        sessions="  cache_ttl: 1s\n  refresh_interval: 1s\n" + sessions,
        upstream_routes=[web.get("/app/ws", ws_echo), web.get("/payroll-group/ws", ws_echo),
                         web.route("*", "/{path:.*}", echo)])


async def open_socket(agent: UserAgent, url: str) -> aiohttp.ClientWebSocketResponse:
    ws = await agent.session.ws_connect(url)
    await ws.send_str("hi")
    assert (await ws.receive(timeout=10)).data == "echo:hi"
    return ws


async def closed_with(ws: aiohttp.ClientWebSocketResponse, reason: str) -> None:
    message = await ws.receive(timeout=WITHIN)
    assert message.type is WSMsgType.CLOSE, message
    assert (message.data, message.extra) == (1008, reason)


async def still_open(ws: aiohttp.ClientWebSocketResponse) -> None:
    await ws.send_str("still")
    assert (await ws.receive(timeout=10)).data == "echo:still"


async def test_a_group_removed_at_the_idp_withdraws_the_socket_it_let_in(
        start_idp: IdpFactory, start_proxy: ProxyFactory, start_upstream: UpstreamFactory) -> None:
    world = await world_with(start_idp, start_proxy, start_upstream)
    world.idp.update_user("alice", groups=("employees", "payroll"))
    async with UserAgent() as agent:
        await world.login(agent, "/app/", "alice", ALICE_PASSWORD)
        payroll = await open_socket(agent, world.url.replace("http", "ws") + "/payroll-group/ws")
        app = await open_socket(agent, world.url.replace("http", "ws") + "/app/ws")
        await still_open(payroll)  # a recheck with nothing changed keeps it
        world.idp.update_user("alice", groups=("employees",))
        # No request but the sockets' frames: the proxy's own refresh of the session finds it.
        await closed_with(payroll, "access withdrawn")
        await still_open(app)  # the app route asks no group: its socket goes on
        await app.close()


async def test_a_disabled_account_ends_its_open_sockets(
        start_idp: IdpFactory, start_proxy: ProxyFactory, start_upstream: UpstreamFactory) -> None:
    world = await world_with(start_idp, start_proxy, start_upstream)
    async with UserAgent() as alice, UserAgent() as bob:
        await world.login(alice, "/app/", "alice", ALICE_PASSWORD)
        await world.login(bob, "/app/", "bob", BOB_PASSWORD, BOB_TOTP_SECRET)
        alices = await open_socket(alice, world.url.replace("http", "ws") + "/app/ws")
        bobs = await open_socket(bob, world.url.replace("http", "ws") + "/app/ws")
        world.idp.update_user("alice", disabled=True)
        await closed_with(alices, "session ended")
        await still_open(bobs)
        await bobs.close()


async def test_a_socket_closes_when_its_session_reaches_its_lifetime(
        start_idp: IdpFactory, start_proxy: ProxyFactory, start_upstream: UpstreamFactory) -> None:
    world = await world_with(start_idp, start_proxy, start_upstream, sessions="  lifetime: 6s\n")
    async with UserAgent() as agent:
        before_sign_in = time.monotonic()  # the session is created after this: a busy machine only adds
        await world.login(agent, "/app/", "alice", ALICE_PASSWORD)
        ws = await open_socket(agent, world.url.replace("http", "ws") + "/app/ws")
        await closed_with(ws, "session ended")
        assert time.monotonic() - before_sign_in >= 5  # not before its lifetime (within a second of the clocks)


async def test_a_session_locked_by_a_burst_of_denials_loses_its_open_sockets(
        start_idp: IdpFactory, start_proxy: ProxyFactory, start_upstream: UpstreamFactory) -> None:
    world = await world_with(start_idp, start_proxy, start_upstream,
                             risk="  denials: {count: 3, window: 60s, lock: 5m}")
    async with UserAgent() as prober, UserAgent() as bob:
        await world.login(prober, "/app/", "alice", ALICE_PASSWORD)
        await world.login(bob, "/app/", "bob", BOB_PASSWORD, BOB_TOTP_SECRET)
        ws = await open_socket(prober, world.url.replace("http", "ws") + "/app/ws")
        bobs = await open_socket(bob, world.url.replace("http", "ws") + "/app/ws")
        for path in ("/payroll-group/", "/payroll-group/a", "/payroll-group/b"):
            async with prober.session.get(world.url + path, headers={"Accept": "application/json"}) as response:
                assert response.status == 403
        await closed_with(ws, "access withdrawn")
        await still_open(bobs)
        await bobs.close()

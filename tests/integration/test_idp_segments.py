"""Sign-in when the IdP's answers arrive in many small, late TCP segments, as on real networks.

The demo IdP sits behind ``SegmentingRelay``: every answer (discovery, JWKS, token,
userinfo, refresh) reaches ztproxy 48 bytes at a time with a pause between pieces. A
client that took "what has arrived" for the body failed every sign-in here.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import ProxyFactory, UpstreamFactory, free_port
from tests.integration.login_env import start_world
from tests.support.idp import ALICE_PASSWORD, IdpFactory
from tests.support.relay import SegmentingRelay
from tests.support.user_agent import UserAgent
from ztproxy.demo_idp import DemoIdp
from ztproxy.fetch import BodyTooLarge, read_bounded

pytestmark = pytest.mark.integration


@pytest.fixture
async def relays() -> AsyncIterator[list[SegmentingRelay]]:
    started: list[SegmentingRelay] = []
    yield started
    for relay in started:
        await relay.close()


def behind_a_relay(start_idp: IdpFactory, relays: list[SegmentingRelay]) -> IdpFactory:
    """``start_idp``, with the IdP reached (by the proxy and the browser alike) through a relay."""
    async def start(**kwargs: Any) -> DemoIdp:
        inner = free_port()
        relay = await SegmentingRelay(inner).start()
        relays.append(relay)
        return await start_idp(**kwargs, port=inner, public_port=relay.port)

    return start


async def test_sign_in_refresh_and_userinfo_through_a_segmenting_network(
        start_idp: IdpFactory, start_proxy: ProxyFactory, start_upstream: UpstreamFactory,
        relays: list[SegmentingRelay]) -> None:
    world = await start_world(behind_a_relay(start_idp, relays), start_proxy, start_upstream,
                              sessions="  refresh_interval: 1s")
    relay = relays[0]
    async with UserAgent() as agent:
        final = await world.login(agent, "/app/", "alice", ALICE_PASSWORD)
        assert final.status == 200, final.text[:300]
        assert final.url == world.url + "/app/"
        await asyncio.sleep(1.2)  # the identity is due for its refresh at the IdP (refresh_interval: 1s)
        again = await agent.get(world.url + "/app/")
        assert again.status == 200, again.text[:300]
    sent = bytes(relay.sent_upstream)
    for call in (b"GET /.well-known/openid-configuration", b"GET /jwks", b"POST /token", b"GET /me",
                 b"grant_type=refresh_token"):
        assert call in sent, call  # every call the proxy makes went through the relay
    assert relay.answers_split >= 5  # and the answers really came in pieces


async def test_an_idp_answer_over_max_response_is_refused_with_the_sign_in_unavailable_page(
        start_idp: IdpFactory, start_proxy: ProxyFactory, start_upstream: UpstreamFactory,
        relays: list[SegmentingRelay]) -> None:
    # The discovery document alone is a few KiB.
    world = await start_world(behind_a_relay(start_idp, relays), start_proxy, start_upstream,
                              provider="    max_response: 1KiB")
    async with aiohttp.ClientSession() as client, \
            client.get(world.url + "/app/", headers={"Accept": "text/html"}, allow_redirects=False) as response:
        assert response.status == 503
        assert "Sign-in unavailable" in await response.text()


async def _dribble(request: web.Request) -> web.StreamResponse:
    body = b'{"pieces": "' + b"x" * 3000 + b'"}'
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    response.content_length = len(body) if request.query.get("length") else None
    await response.prepare(request)
    for start in range(0, len(body), 100):
        await response.write(body[start:start + 100])
        await asyncio.sleep(0.001)
    await response.write_eof()
    return response


@pytest.mark.parametrize("length", [True, False], ids=["content-length", "chunked"])
async def test_read_bounded_reads_to_the_end_and_stops_at_the_limit(start_upstream: UpstreamFactory,
                                                                   length: bool) -> None:
    upstream = await start_upstream(_dribble)
    url = upstream.url + ("/?length=1" if length else "/")
    async with aiohttp.ClientSession() as client:
        async with client.get(url) as response:
            assert len(await read_bounded(response, 4096)) == 3000 + len(b'{"pieces": ""}')
        async with client.get(url) as response:
            with pytest.raises(BodyTooLarge):
                await read_bounded(response, 1024)



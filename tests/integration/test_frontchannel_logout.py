"""OIDC Front-Channel Logout 1.0: the IdP's sign-out page ends the sessions of its IdP session.

The IdP loads ``/.ztproxy/frontchannel-logout?iss=...&sid=...`` in a cross-site iframe,
where SameSite=Lax cookies are not sent: so the request carries no session cookie, and
what it names (the issuer and the IdP session) is all the proxy goes by. Anything less
ends nothing. (npm oidc-provider 8.8 does not implement front-channel logout; the OP here
is the tests' own, whose ID tokens carry the ``sid`` the requests name.)
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.conftest import Proxy, ProxyFactory, UpstreamFactory
from tests.support.rogue_op import RogueOp, start_rogue_world
from tests.support.user_agent import UserAgent

pytestmark = pytest.mark.integration

SID = "idp-session-0123"


@pytest.fixture
async def world(start_proxy: ProxyFactory, start_upstream: UpstreamFactory) -> AsyncIterator[tuple[RogueOp, Proxy]]:
    op, proxy, runner = await start_rogue_world(RogueOp(client_secret="frontchannel-test-secret", sid=SID),
                                                start_proxy, start_upstream)
    yield op, proxy
    await runner.cleanup()


async def signed_in_cookie(proxy: Proxy) -> str:
    async with UserAgent() as agent:
        assert (await agent.navigate(proxy.url + "/app/")).status == 200
        return next(c.value for c in agent.cookie_jar if c.key == "ztproxy_session")


async def status_with(proxy: Proxy, cookie: str) -> int:
    async with aiohttp.ClientSession() as client, client.get(
            proxy.url + "/app/", headers={"Cookie": f"ztproxy_session={cookie}", "Accept": "application/json"},
            allow_redirects=False) as response:
        return response.status


async def frontchannel(proxy: Proxy, query: str) -> aiohttp.ClientResponse:
    async with aiohttp.ClientSession() as client:  # no cookie, as from the OP's cross-site iframe
        async with client.get(f"{proxy.url}/.ztproxy/frontchannel-logout?{query}") as response:
            await response.read()
            return response


async def test_the_idp_session_named_ends_without_a_cookie(world: tuple[RogueOp, Proxy]) -> None:
    op, proxy = world
    cookie = await signed_in_cookie(proxy)
    assert await status_with(proxy, cookie) == 200
    response = await frontchannel(proxy, f"iss={op.issuer}&sid={SID}")
    assert response.status == 200
    # Only the issuer's pages may frame it; every other page of the proxy refuses framing.
    assert f"frame-ancestors {op.issuer}" in response.headers["Content-Security-Policy"]
    assert "X-Frame-Options" not in response.headers
    assert await status_with(proxy, cookie) == 401


@pytest.mark.parametrize("query", [
    "sid=" + SID,  # no iss
    "iss=http://127.0.0.1:1&sid=" + SID,  # another issuer
    "iss={issuer}",  # no sid
    "iss={issuer}&sid=another-idp-session",  # a session nobody has: ends nothing
    "iss={issuer}&sid=" + SID + "&sid=" + SID,  # repeated
])
async def test_anything_less_ends_nothing(world: tuple[RogueOp, Proxy], query: str) -> None:
    op, proxy = world
    cookie = await signed_in_cookie(proxy)
    response = await frontchannel(proxy, query.format(issuer=op.issuer))
    assert response.status in (200, 400)
    assert "frame-ancestors" in response.headers["Content-Security-Policy"]
    assert await status_with(proxy, cookie) == 200

"""A browser's requests over HTTP/2 to an ordinary HTTP/1.1 app: sign-in, the session, header hygiene.

The real IdP and the login world of ``login_env``, on a listener that also speaks h2c
(prior knowledge): the user signs in with ``UserAgent`` (HTTP/1.1), then the same
browser's cookie goes over HTTP/2 with ``tests.support.h2client``, as a browser's would.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import orjson
import pytest
from aiohttp.http import SERVER_SOFTWARE

from tests.conftest import ProxyFactory, UpstreamFactory
from tests.integration.login_env import LoginWorld, start_world
from tests.support.h2client import H2Client
from tests.support.idp import ALICE_PASSWORD, BOB_PASSWORD, BOB_TOTP_SECRET, IdpFactory
from tests.support.user_agent import BROWSER_ACCEPT, UserAgent

pytestmark = pytest.mark.integration


@pytest.fixture
async def world(start_idp: IdpFactory, start_proxy: ProxyFactory, start_upstream: UpstreamFactory) -> LoginWorld:
    return await start_world(start_idp, start_proxy, start_upstream, server="  http2: {cleartext: true}")


# The browser is the same one as at sign-in: session risk revokes a cookie that changes browsers.
BROWSER = [("accept", BROWSER_ACCEPT), ("user-agent", SERVER_SOFTWARE)]


async def _browser_cookie(world: LoginWorld, username: str, password: str, totp: str | None = None) -> str:
    async with UserAgent() as agent:
        signed_in = await world.login(agent, "/app/", username, password, totp)
        assert signed_in.status == 200
        # The proxy's cookies only: the IdP, on the same loopback host, left its own in the jar.
        return "; ".join(f"{cookie.key}={cookie.value}" for cookie in agent.cookie_jar
                         if cookie.key.startswith("ztproxy"))


async def test_signed_in_get_over_h2(world: LoginWorld) -> None:
    cookie = await _browser_cookie(world, "alice", ALICE_PASSWORD)
    client = await H2Client.connect(world.proxy.port)
    try:
        # Split cookie fields, as HTTP/2 browsers send them (RFC 9113 8.2.3), and forged identity headers.
        response = await client.request("GET", "/app/page?q=1", [
            *BROWSER, *(("cookie", part) for part in cookie.split("; ")),
            ("cookie", "theme=dark"), ("x-ztproxy-user", "mallory"), ("x-ztproxy-email", "mallory@corp.example")],
            authority=urlsplit(world.url).netloc)
    finally:
        await client.close()
    assert response.status == 200, response.body[:300]
    seen = orjson.loads(response.body)
    headers = [(name.lower(), value) for name, value in seen["headers"]]
    assert seen["path"] == "/app/page?q=1"
    assert ("x-ztproxy-user", "alice") in headers and ("x-ztproxy-email", "alice@corp.example") in headers
    assert not any(value in ("mallory", "mallory@corp.example") for _, value in headers)
    assert [value for name, value in headers if name == "cookie"] == ["theme=dark"]  # the session cookie stays
    assert any(name == "x-ztproxy-jwt-assertion" for name, _ in headers)


async def test_unauthenticated_navigation_over_h2_is_sent_to_sign_in(world: LoginWorld) -> None:
    client = await H2Client.connect(world.proxy.port)
    try:
        navigation = await client.request("GET", "/app/page", BROWSER,
                                          authority=urlsplit(world.url).netloc)
        api = await client.request("GET", "/app/data", [("accept", "application/json")],
                                   authority=urlsplit(world.url).netloc)
    finally:
        await client.close()
    assert navigation.status == 302
    location = navigation.header("location")
    assert location is not None and location.startswith(world.idp.issuer)
    assert navigation.header("content-security-policy") is not None  # the proxy's own answer, secured
    assert api.status == 401 and orjson.loads(api.body)["error"] == "authentication-required"
    assert world.upstream.requests == []


async def test_the_deny_page_over_h2(world: LoginWorld) -> None:
    cookie = await _browser_cookie(world, "bob", BOB_PASSWORD, BOB_TOTP_SECRET)
    calls = len(world.upstream.requests)
    client = await H2Client.connect(world.proxy.port)
    try:
        denied = await client.request("GET", "/alice/", [*BROWSER, ("cookie", cookie)],
                                      authority=urlsplit(world.url).netloc)
    finally:
        await client.close()
    assert denied.status == 403
    assert b"Your account is not on the list of users of this application." in denied.body
    assert len(world.upstream.requests) == calls

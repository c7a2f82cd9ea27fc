"""Sign-in end to end: a real OpenID Provider, the browser's journey, and what the app receives."""

from __future__ import annotations

import pytest

from tests.conftest import ProxyFactory, UpstreamFactory
from tests.integration.login_env import LoginWorld, echo_json, start_world
from tests.support.idp import ALICE_PASSWORD, BOB_PASSWORD, BOB_TOTP_SECRET, IdpFactory
from tests.support.user_agent import UserAgent


@pytest.fixture
async def world(start_idp: IdpFactory, start_proxy: ProxyFactory, start_upstream: UpstreamFactory) -> LoginWorld:
    return await start_world(start_idp, start_proxy, start_upstream)


async def test_sign_in_returns_to_the_page_first_asked_for(world: LoginWorld) -> None:
    async with UserAgent() as agent:
        first = await agent.get(world.url + "/app/page?q=1&r=two")
        assert first.status == 302
        assert first.location is not None and first.location.startswith(world.idp.issuer)
        final = await world.login(agent, "/app/page?q=1&r=two", "alice", ALICE_PASSWORD)
        assert final.status == 200, final.text[:500]
        assert final.url == world.url + "/app/page?q=1&r=two"
        seen = echo_json(final)
        assert seen["path"] == "/app/page?q=1&r=two"
        # The session cookie opens the session: the app never sees it.
        cookies = [v for k, v in seen["headers"] if k.lower() == "cookie"]
        assert not any("ztproxy_session" in c for c in cookies)
        # Signed in now: the next request goes straight through.
        again = await agent.get(world.url + "/app/other")
        assert again.status == 200


async def test_session_cookie_flags(world: LoginWorld) -> None:
    async with UserAgent() as agent:
        await world.login(agent, "/app/", "alice", ALICE_PASSWORD)
        callback = next(r for r in agent.history if r.url.startswith(world.url + "/.ztproxy/callback"))
        cookie = next(v for v in callback.headers.getall("Set-Cookie") if v.startswith("ztproxy_session="))
        lowered = cookie.lower()
        assert "httponly" in lowered and "samesite=lax" in lowered and "path=/" in lowered
        assert "secure" not in lowered  # http public URL; https sets Secure (unit-tested)
        assert "max-age=43200" in lowered


async def test_an_api_client_without_a_session_gets_401_not_a_redirect(world: LoginWorld) -> None:
    async with UserAgent() as agent:
        response = await agent.session.get(world.url + "/app/data", headers={"Accept": "application/json"},
                                           allow_redirects=False)
        assert response.status == 401
        assert response.headers["WWW-Authenticate"] == 'Bearer realm="ztproxy"'
        body = await response.json()
        assert body["error"] == "authentication-required"
        post = await agent.session.post(world.url + "/app/data", data=b"x", allow_redirects=False)
        assert post.status == 401  # a form post would lose its body on the way through the IdP
        curl = await agent.session.get(world.url + "/app/data", headers={"Accept": "*/*"}, allow_redirects=False)
        assert curl.status == 401  # not a browser loading a page


async def test_signed_in_but_not_allowed_gets_the_deny_page(world: LoginWorld) -> None:
    async with UserAgent() as agent:
        await world.login(agent, "/app/", "bob", BOB_PASSWORD, BOB_TOTP_SECRET)
        denied = await agent.get(world.url + "/alice/")
        assert denied.status == 403
        assert "Your account is not on the list of users of this application." in denied.text
        # Who they are signed in as, and where to look next.
        assert "You are signed in as bob@corp.example." in denied.text and "/.ztproxy/me" in denied.text


async def test_public_routes_need_no_sign_in(world: LoginWorld) -> None:
    async with UserAgent() as agent:
        response = await agent.get(world.url + "/public/x")
        assert response.status == 200

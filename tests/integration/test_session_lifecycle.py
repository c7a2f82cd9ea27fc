"""Sessions over time: sign-out, back-channel logout, identity refresh, and the IdP going away."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from joserfc import jwt
from joserfc.jwk import KeySet
from yarl import URL

from tests.conftest import ProxyFactory, UpstreamFactory
from tests.integration.login_env import CLIENT_ID, LoginWorld, start_world
from tests.support.idp import ALICE_PASSWORD, IdpFactory
from tests.support.user_agent import UserAgent

EVENT = "http://schemas.openid.net/event/backchannel-logout"


@pytest.fixture
async def world(start_idp: IdpFactory, start_proxy: ProxyFactory, start_upstream: UpstreamFactory) -> LoginWorld:
    return await start_world(start_idp, start_proxy, start_upstream, sessions="  refresh_interval: 1s")


def session_cookie(agent: UserAgent) -> str | None:
    return next((c.value for c in agent.cookie_jar if c.key == "ztproxy_session"), None)


async def api_status(world: LoginWorld, cookie: str | None, path: str = "/app/") -> int:
    headers = {"Accept": "application/json"}
    if cookie:
        headers["Cookie"] = f"ztproxy_session={cookie}"
    async with aiohttp.ClientSession() as client:
        async with client.get(world.url + path, headers=headers, allow_redirects=False) as response:
            return response.status


async def eventually(condition: Callable[[], Awaitable[bool]], what: str, within: float = 8.0) -> None:
    deadline = time.monotonic() + within
    while not await condition():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.2)


# --- sign-out --------------------------------------------------------------------------------


@pytest.mark.parametrize("hint", [False, True], ids=["client_id", "id_token_hint"])
async def test_sign_out_ends_the_session_here_and_at_the_idp(
        start_idp: IdpFactory, start_proxy: ProxyFactory, start_upstream: UpstreamFactory, hint: bool) -> None:
    # RP-Initiated Logout 1.0 section 2: the ID token as id_token_hint only where the IdP is told
    # to keep it (logout_id_token_hint); else client_id, by which the IdP checks the redirect URI.
    world = await start_world(start_idp, start_proxy, start_upstream, sessions="  refresh_interval: 1s",
                              provider=f"    logout_id_token_hint: {str(hint).lower()}")
    async with UserAgent() as agent:
        await world.login(agent, "/app/", "alice", ALICE_PASSWORD)
        cookie = session_cookie(agent)
        page = await agent.get(world.url + "/.ztproxy/logout")
        assert page.status == 200 and "Sign out?" in page.text
        form = page.form("csrf")
        assert form is not None
        # A cross-site form (no token) signs nobody out.
        forged = await agent.request("POST", world.url + "/.ztproxy/logout", data={})
        assert forged.status == 403 and await api_status(world, cookie) == 200
        out = await agent.request("POST", form.action, data=form.fields)
        assert out.status == 303 and out.location is not None
        end_session = urlsplit(out.location)
        params = parse_qs(end_session.query)
        assert out.location.startswith(world.idp.issuer)
        assert params["post_logout_redirect_uri"] == [world.url + "/.ztproxy/signed-out"]
        assert params["client_id"] == [CLIENT_ID]
        if hint:
            [id_token] = params["id_token_hint"]
            claims = jwt.decode(id_token, KeySet.import_key_set(json.loads(world.idp.keys_path.read_text()))).claims
            assert claims["aud"] == CLIENT_ID and claims["sub"] == "alice"
        else:
            assert "id_token_hint" not in params
        confirm = await agent.follow(out)
        idp_form = confirm.form()
        assert idp_form is not None
        done = await agent.submit(idp_form, button="logout")
        assert done.url == world.url + "/.ztproxy/signed-out" and "You are signed out" in done.text
        assert await api_status(world, cookie) == 401
        # The IdP session ended too: signing in again asks for the password.
        again = await agent.navigate(world.url + "/app/")
        assert again.form("password") is not None


async def test_sign_out_without_a_session_just_says_so(world: LoginWorld) -> None:
    async with UserAgent() as agent:
        page = await agent.get(world.url + "/.ztproxy/logout")
        assert page.status == 200 and "You are signed out" in page.text


# --- back-channel logout ---------------------------------------------------------------------------


async def test_the_idp_ending_a_session_ends_it_here(world: LoginWorld) -> None:
    async with UserAgent() as agent:
        await world.login(agent, "/app/", "alice", ALICE_PASSWORD)
        cookie = session_cookie(agent)
        assert await api_status(world, cookie) == 200
        deliveries = await world.idp.end_sessions("alice")
        assert deliveries and all(d.delivered for d in deliveries), deliveries
        assert await api_status(world, cookie) == 401


def logout_token(world: LoginWorld, **claims: object) -> str:
    keys = KeySet.import_key_set(json.loads(world.idp.keys_path.read_text()))
    key = next(k for k in keys if k.key_type == "RSA")
    now = int(time.time())
    body = {"iss": world.idp.issuer, "aud": CLIENT_ID, "iat": now, "exp": now + 120, "jti": os.urandom(8).hex(),
            "sub": "alice", "events": {EVENT: {}}, **claims}
    return jwt.encode({"alg": "RS256", "kid": key.kid, "typ": "logout+jwt"}, body, key)


async def post_logout_token(world: LoginWorld, token: str) -> int:
    async with aiohttp.ClientSession() as client:
        async with client.post(world.url + "/.ztproxy/backchannel-logout", data={"logout_token": token}) as response:
            return response.status


async def test_back_channel_logout_tokens_are_checked(world: LoginWorld) -> None:
    async with UserAgent() as agent:
        await world.login(agent, "/app/", "alice", ALICE_PASSWORD)
        cookie = session_cookie(agent)
    assert await post_logout_token(world, logout_token(world, nonce="n")) == 400  # 2.4: no nonce
    assert await post_logout_token(world, logout_token(world, aud="someone-else")) == 400
    assert await post_logout_token(world, logout_token(world, events={})) == 400
    assert await post_logout_token(world, "not.a.token") == 400
    assert await api_status(world, cookie) == 200  # none of those ended anything
    token = logout_token(world)
    assert await post_logout_token(world, token) == 200
    assert await api_status(world, cookie) == 401
    assert await post_logout_token(world, token) == 400  # 2.6: a jti is used once


# --- continuous verification -----------------------------------------------------------------------


async def test_new_groups_apply_at_the_next_refresh(world: LoginWorld) -> None:
    async with UserAgent() as agent:
        await world.login(agent, "/app/", "alice", ALICE_PASSWORD)
        cookie = session_cookie(agent)
    assert await api_status(world, cookie, "/payroll-group/") == 403
    world.idp.update_user("alice", groups=("employees", "payroll"))

    async def allowed() -> bool:
        return await api_status(world, cookie, "/payroll-group/") == 200
    await eventually(allowed, "the new group never applied")


async def test_a_disabled_account_loses_its_session(world: LoginWorld) -> None:
    async with UserAgent() as agent:
        await world.login(agent, "/app/", "alice", ALICE_PASSWORD)
        cookie = session_cookie(agent)
    world.idp.update_user("alice", disabled=True)

    async def ended() -> bool:
        return await api_status(world, cookie) == 401
    await eventually(ended, "the disabled account kept its session")


async def test_when_the_idp_is_down_sessions_keep_working_and_new_sign_ins_get_a_clear_503(
        world: LoginWorld) -> None:
    async with UserAgent() as agent:
        await world.login(agent, "/app/", "alice", ALICE_PASSWORD)
        cookie = session_cookie(agent)
    await world.idp.stop()
    await asyncio.sleep(1.1)  # the session is due for a refresh, which fails
    assert await api_status(world, cookie) == 200
    assert await api_status(world, cookie) == 200
    async with UserAgent() as newcomer:
        page = await newcomer.get(world.url + "/app/")
        assert page.status == 503 and "Sign-in unavailable" in page.text
        assert page.headers["Retry-After"]
    await world.idp.start()  # back on the same port: sign-ins work again
    async with UserAgent() as newcomer:
        final = await world.login(newcomer, "/app/", "alice", ALICE_PASSWORD)
        assert final.status == 200 and URL(final.url).path == "/app/"

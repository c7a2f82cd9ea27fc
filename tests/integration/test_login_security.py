"""Sign-in under attack: forged tokens, replayed callbacks, fixation, tampered cookies, open redirects."""

from __future__ import annotations

import asyncio
import base64
import os

import aiohttp
import pytest
from aiohttp import web
from joserfc.jwk import RSAKey
from yarl import URL

from tests.conftest import Proxy, ProxyFactory, UpstreamFactory
from tests.integration.login_env import LoginWorld, start_world
from tests.support.idp import ALICE_PASSWORD, IdpFactory
from tests.support.rogue_op import MODES, RogueOp, start_rogue_world
from tests.support.user_agent import BROWSER_ACCEPT, UserAgent


@pytest.fixture
async def world(start_idp: IdpFactory, start_proxy: ProxyFactory, start_upstream: UpstreamFactory) -> LoginWorld:
    return await start_world(start_idp, start_proxy, start_upstream)


def session_cookie(agent: UserAgent) -> str | None:
    return next((c.value for c in agent.cookie_jar if c.key == "ztproxy_session"), None)


async def test_a_replayed_callback_is_refused(world: LoginWorld) -> None:
    async with UserAgent() as agent:
        stop = world.url + "/.ztproxy/callback"
        held = await agent.login(world.url + "/app/", "alice", ALICE_PASSWORD,
                                 stop_at=lambda url: str(url).startswith(stop))
        callback = held.location
        assert callback is not None and callback.startswith(stop)
        login_cookie = next(c.value for c in agent.cookie_jar if c.key == "ztproxy_session_login")
        first = await agent.get(callback)
        assert first.status == 303 and session_cookie(agent)
        again = await agent.get(callback)
        assert again.status == 400 and "Sign-in failed" in again.text
    # Another browser with a copy of the login cookie: the state is spent server-side too.
    async with UserAgent() as thief:
        thief.cookie_jar.update_cookies({"ztproxy_session_login": login_cookie}, URL(world.url + "/.ztproxy/"))
        stolen = await thief.get(callback)
        assert stolen.status == 400 and session_cookie(thief) is None


async def test_a_callback_in_another_browser_is_refused(world: LoginWorld) -> None:
    async with UserAgent() as victim:
        stop = world.url + "/.ztproxy/callback"
        held = await victim.login(world.url + "/app/", "alice", ALICE_PASSWORD,
                                  stop_at=lambda url: str(url).startswith(stop))
    assert held.location is not None
    # Login CSRF: the attacker's code and state, delivered to a browser that never started it.
    async with UserAgent() as other:
        response = await other.get(held.location)
        assert response.status == 400 and session_cookie(other) is None
        assert "was not started in this browser" in response.text


async def test_a_pre_set_session_cookie_is_replaced_at_sign_in(world: LoginWorld) -> None:
    planted = base64.urlsafe_b64encode(b"\x01" + os.urandom(64)).rstrip(b"=").decode()
    async with UserAgent() as agent:
        agent.cookie_jar.update_cookies({"ztproxy_session": planted}, URL(world.url))
        await world.login(agent, "/app/", "alice", ALICE_PASSWORD)
        assert session_cookie(agent) not in (None, planted)
    async with aiohttp.ClientSession(cookies={"ztproxy_session": planted}) as attacker:
        async with attacker.get(world.url + "/app/", headers={"Accept": "application/json"},
                                allow_redirects=False) as response:
            assert response.status == 401


@pytest.mark.parametrize("cookie", [
    "x", "", "A" * 88, "%00%ff", "a" * 5000, "\u00e9t\u00e9",
    base64.urlsafe_b64encode(b"\x01" + os.urandom(64)).rstrip(b"=").decode(),  # well-formed, unknown
    base64.urlsafe_b64encode(b"\x09" + os.urandom(64)).rstrip(b"=").decode(),  # unknown version
])
async def test_junk_session_cookies_are_no_session_never_an_error(world: LoginWorld, cookie: str) -> None:
    async with aiohttp.ClientSession() as client:
        async with client.get(world.url + "/app/", headers={"Cookie": f"ztproxy_session={cookie}",
                                                            "Accept": BROWSER_ACCEPT},
                              allow_redirects=False) as response:
            assert response.status == 302  # off to sign in, as if there were no cookie


async def test_a_tampered_session_cookie_is_no_session(world: LoginWorld) -> None:
    async with UserAgent() as agent:
        await world.login(agent, "/app/", "alice", ALICE_PASSWORD)
        value = session_cookie(agent)
        assert value is not None
    for tampered in (value[:-1] + ("A" if value[-1] != "A" else "B"), value[:40], value[:10] + value[11:] + "x"):
        async with aiohttp.ClientSession() as client:
            async with client.get(world.url + "/app/", headers={"Cookie": f"ztproxy_session={tampered}",
                                                                "Accept": BROWSER_ACCEPT},
                                  allow_redirects=False) as response:
                assert response.status == 302


async def test_the_return_url_never_leaves_the_proxy(world: LoginWorld) -> None:
    # The route answers any host; a forged Host must not become the post-login destination.
    async with UserAgent() as agent:
        first = await agent.session.get(world.url + "/app/x?y=1", headers={"Host": "evil.example"},
                                        allow_redirects=False)
        assert first.status == 302
        held = await agent.login(first.headers["Location"], "alice", ALICE_PASSWORD,
                                 stop_at=lambda url: str(url).startswith(world.url + "/.ztproxy/callback"))
        assert held.location is not None
        back = await agent.get(held.location)
        assert back.status == 303 and back.location == world.url + "/app/x?y=1"


async def test_a_callback_with_another_issuer_parameter_is_refused(world: LoginWorld) -> None:
    async with UserAgent() as agent:
        held = await agent.login(world.url + "/app/", "alice", ALICE_PASSWORD,
                                 stop_at=lambda url: str(url).startswith(world.url + "/.ztproxy/callback"))
        assert held.location is not None
        mixed_up = str(URL(held.location).update_query(iss="https://attacker.example"))
        response = await agent.get(mixed_up)
        assert response.status == 400 and session_cookie(agent) is None


# --- a rogue OpenID Provider ------------------------------------------------------------------


async def rogue_world(mode: str, start_proxy: ProxyFactory, start_upstream: UpstreamFactory
                      ) -> tuple[RogueOp, Proxy, web.AppRunner]:
    return await start_rogue_world(RogueOp(client_secret="rogue-test-client-secret", mode=mode), start_proxy,
                                   start_upstream)


@pytest.mark.parametrize("mode", MODES)
async def test_tokens_from_a_rogue_provider(mode: str, start_proxy: ProxyFactory,
                                            start_upstream: UpstreamFactory) -> None:
    op, proxy, runner = await rogue_world(mode, start_proxy, start_upstream)
    try:
        async with UserAgent() as agent:
            final = await agent.navigate(proxy.url + "/app/")
            if mode == "valid":  # the harness itself works: a good token signs in
                assert final.status == 200 and session_cookie(agent) is not None
                return
            assert final.status == 400, (mode, final.status, final.text[:300])
            assert "Sign-in failed" in final.text
            assert session_cookie(agent) is None
            assert final.url.startswith(proxy.url + "/.ztproxy/callback")
    finally:
        await runner.cleanup()


async def test_a_provider_key_rotation_is_picked_up_and_unknown_kids_cost_one_fetch_per_cooldown(
        start_proxy: ProxyFactory, start_upstream: UpstreamFactory) -> None:
    op, proxy, runner = await rogue_world("valid", start_proxy, start_upstream)
    try:
        async with UserAgent() as agent:
            assert (await agent.navigate(proxy.url + "/app/")).status == 200
        assert op.jwks_fetches == 1
        # The IdP rotates to a new key with a new kid: the next login refetches and works.
        op.key = RSAKey.generate_key(2048, parameters={"kid": "op-key-2"})
        async with UserAgent() as agent:
            assert (await agent.navigate(proxy.url + "/app/")).status == 200
        assert op.jwks_fetches == 2
        # Tokens with a kid nobody publishes: refused, and no refetch within the cooldown.
        op.published = []
        op.key = RSAKey.generate_key(2048, parameters={"kid": "op-key-3"})
        for _ in range(3):
            async with UserAgent() as agent:
                assert (await agent.navigate(proxy.url + "/app/")).status == 400
        assert op.jwks_fetches == 2
    finally:
        await runner.cleanup()


async def test_logins_in_progress_are_bounded_per_browser_and_expire(
        start_idp: IdpFactory, start_proxy: ProxyFactory, start_upstream: UpstreamFactory) -> None:
    world = await start_world(start_idp, start_proxy, start_upstream, sessions="  login_timeout: 2s")
    async with UserAgent() as agent:
        stop = world.url + "/.ztproxy/callback"
        held = [await agent.login(world.url + f"/app/{i}", "alice", ALICE_PASSWORD,
                                  stop_at=lambda url: str(url).startswith(stop)) for i in range(6)]
        # Six logins started in one browser: the oldest no longer fits in its login cookie.
        first = await agent.get(held[0].location or "")
        assert first.status == 400
        last = await agent.get(held[5].location or "")
        assert last.status == 303 and last.location == world.url + "/app/5"
        await asyncio.sleep(2.1)
        late = await agent.get(held[4].location or "")
        assert late.status == 400  # older than login_timeout

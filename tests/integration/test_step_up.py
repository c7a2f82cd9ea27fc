"""Step-up: a route that needs MFA or a fresh login sends the browser back to the IdP for it."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from yarl import URL

from tests.conftest import ProxyFactory, UpstreamFactory
from tests.integration.login_env import LoginWorld, echo_json, start_world
from tests.support.idp import ALICE_PASSWORD, BOB_PASSWORD, BOB_TOTP_SECRET, IdpFactory
from tests.support.user_agent import UserAgent
from ztproxy import authorize


@pytest.fixture
async def world(start_idp: IdpFactory, start_proxy: ProxyFactory, start_upstream: UpstreamFactory) -> LoginWorld:
    return await start_world(start_idp, start_proxy, start_upstream)


def session_cookie(agent: UserAgent) -> str:
    return next(c.value for c in agent.cookie_jar if c.key == "ztproxy_session")


async def test_mfa_step_up_asks_the_idp_for_the_second_factor_and_rotates_the_session(world: LoginWorld) -> None:
    async with UserAgent() as agent:
        await world.login(agent, "/app/", "bob", BOB_PASSWORD)  # password only
        before = session_cookie(agent)
        redirect = await agent.get(world.url + "/payroll/report?month=5")
        assert redirect.status == 302 and redirect.location is not None
        params = parse_qs(urlsplit(redirect.location).query)
        assert params["acr_values"] == [world.idp.mfa_acr]
        claims = json.loads(params["claims"][0])
        assert claims["id_token"]["acr"] == {"essential": True, "values": [world.idp.mfa_acr]}
        assert params["code_challenge_method"] == ["S256"] and "prompt" not in params
        final = await world.login(agent, "/payroll/report?month=5", "bob", BOB_PASSWORD, BOB_TOTP_SECRET)
        assert final.status == 200 and final.url == world.url + "/payroll/report?month=5"
        assert echo_json(final)["path"] == "/payroll/report?month=5"
        after = session_cookie(agent)
        assert after != before  # a new session id at step-up (no fixation across privilege levels)
        # The old cookie opens nothing any more.
        async with UserAgent() as stale:
            stale.cookie_jar.update_cookies({"ztproxy_session": before}, URL(world.url))
            response = await stale.session.get(world.url + "/app/", headers={"Accept": "application/json"},
                                               allow_redirects=False)
            assert response.status == 401


async def test_an_api_client_gets_the_rfc_9470_challenge(world: LoginWorld) -> None:
    async with UserAgent() as agent:
        await world.login(agent, "/app/", "bob", BOB_PASSWORD)
        response = await agent.session.get(world.url + "/payroll/data", headers={"Accept": "application/json"},
                                           allow_redirects=False)
        assert response.status == 401
        challenge = response.headers["WWW-Authenticate"]
        assert challenge.startswith('Bearer error="insufficient_user_authentication"')
        assert f'acr_values="{world.idp.mfa_acr}"' in challenge
        body = await response.json()
        assert body["error"] == "insufficient-user-authentication"


async def test_a_user_without_a_second_factor_sees_why_instead_of_a_loop(world: LoginWorld) -> None:
    async with UserAgent() as agent:
        await world.login(agent, "/app/", "alice", ALICE_PASSWORD)
        start = len(agent.history)
        final = await world.login(agent, "/mfa/", "alice", ALICE_PASSWORD)
        assert final.status == 403
        assert "You signed in, but without a second factor" in final.text
        to_idp = [r for r in agent.history[start:] if r.url.startswith(world.idp.issuer + "/auth?")]
        assert len(to_idp) == 1
        # Where MFA would not help (not in the group), there is no step-up at all: a plain denial.
        denied = await agent.get(world.url + "/payroll/")
        assert denied.status == 403 and "not in a group this application requires" in denied.text


async def test_max_auth_age_asks_for_a_fresh_login(world: LoginWorld, monkeypatch: pytest.MonkeyPatch) -> None:
    async with UserAgent() as agent:
        await world.login(agent, "/app/", "alice", ALICE_PASSWORD)
        assert (await agent.get(world.url + "/fresh/")).status == 200  # the route takes sign-ins up to 1m old
        # An injected clock, not a sleep: the sign-in is now 61 s old as the proxy decides. The
        # new sign-in then has the route's whole minute to come back, however busy the machine.
        monkeypatch.setattr(authorize, "utc_now", lambda: datetime.now(UTC) + timedelta(seconds=61))
        redirect = await agent.get(world.url + "/fresh/")
        assert redirect.status == 302 and redirect.location is not None
        params = parse_qs(urlsplit(redirect.location).query)
        assert params["max_age"] == ["60"] and params["prompt"] == ["login"]
        monkeypatch.undo()
        final = await agent.follow(redirect)
        assert final.form("password") is not None  # the IdP asks for the password again
        done = await world.login(agent, "/fresh/", "alice", ALICE_PASSWORD)
        assert done.status == 200 and done.url == world.url + "/fresh/"


async def test_a_route_that_always_needs_mfa_asks_for_it_at_the_first_sign_in(world: LoginWorld) -> None:
    async with UserAgent() as agent:
        redirect = await agent.get(world.url + "/mfa/")
        assert redirect.status == 302 and redirect.location is not None
        params = parse_qs(urlsplit(redirect.location).query)
        assert params["acr_values"] == [world.idp.mfa_acr] and "prompt" not in params
        final = await world.login(agent, "/mfa/", "bob", BOB_PASSWORD, BOB_TOTP_SECRET)
        assert final.status == 200 and final.url == world.url + "/mfa/"
        # One trip to the IdP, not a password sign-in followed by a step-up.
        assert len([r for r in agent.history if r.url.startswith(world.idp.issuer + "/auth?")]) == 1

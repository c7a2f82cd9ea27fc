"""Messages from the IdP with a parameter repeated (RFC 6749 3.1): refused, whatever copy is forged.

A real sign-in with the demo IdP is stopped before the callback; a copy of one parameter is
placed before or after the real one. The proxy must refuse it, set no session, and leave
the login in progress as it was: the untampered callback still signs in afterwards.
"""

from __future__ import annotations

import time

import aiohttp
import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey
from structlog.testing import capture_logs
from yarl import URL

from tests.conftest import ProxyFactory, UpstreamFactory
from tests.integration.login_env import LoginWorld, start_world
from tests.integration.test_session_lifecycle import EVENT, api_status, logout_token, session_cookie
from tests.integration.test_session_metrics import sample
from tests.support.idp import ALICE_PASSWORD, IdpFactory
from tests.support.user_agent import Response, UserAgent

pytestmark = pytest.mark.integration

# The forged copy of each parameter, and for those a successful response lacks, a plausible real one.
FORGED = {"code": "forged-code", "state": "forged-state", "iss": "https://attacker.example",
          "error": "server_error", "session_state": "forged-session-state"}
PLAUSIBLE = {"error": "access_denied", "session_state": "c0ffee.salt"}


@pytest.fixture
async def world(start_idp: IdpFactory, start_proxy: ProxyFactory, start_upstream: UpstreamFactory) -> LoginWorld:
    return await start_world(start_idp, start_proxy, start_upstream)


def with_copy(callback: str, name: str, *, forged_first: bool) -> str:
    """``callback`` with a forged copy of ``name`` just before or just after the real one."""
    url = URL(callback)
    pairs = list(url.query.items())
    if name not in url.query:
        pairs.append((name, PLAUSIBLE[name]))
    at = next(i for i, (key, _) in enumerate(pairs) if key == name)
    pairs.insert(at if forged_first else at + 1, (name, FORGED[name]))
    return str(url.with_query(pairs))


def refusals() -> float:
    return sample("ztproxy_logins_total", result="refused", reason="repeated-parameter")


async def held_at_callback(world: LoginWorld, agent: UserAgent) -> str:
    stop = world.url + "/.ztproxy/callback"
    held = await agent.login(world.url + "/app/", "alice", ALICE_PASSWORD,
                             stop_at=lambda url: str(url).startswith(stop))
    assert held.location is not None and held.location.startswith(stop)
    return held.location


def assert_no_cookie_set(response: Response) -> None:
    # Neither a session nor any change to the login in progress.
    assert response.headers.getall("Set-Cookie", []) == []


@pytest.mark.parametrize("forged_first", [True, False], ids=["first-forged", "last-forged"])
@pytest.mark.parametrize("name", list(FORGED))
async def test_a_repeated_callback_parameter_is_refused_and_the_login_survives(
        world: LoginWorld, name: str, forged_first: bool) -> None:
    async with UserAgent() as agent:
        callback = await held_at_callback(world, agent)
        before = refusals()
        with capture_logs() as logs:
            tampered = await agent.get(with_copy(callback, name, forged_first=forged_first))
        assert tampered.status == 400, tampered.text[:300]
        assert "Sign-in failed" in tampered.text and "more than once" in tampered.text
        assert "Traceback" not in tampered.text
        assert_no_cookie_set(tampered)
        assert session_cookie(agent) is None
        assert refusals() == before + 1
        assert {"event": "login_refused", "reason": "repeated-parameter", "provider": "-", "parameter": name,
                "log_level": "warning"} in logs
        # Refused before the state was looked at: the real response still completes the sign-in.
        genuine = await agent.get(callback)
        assert genuine.status == 303 and genuine.location == world.url + "/app/"
        assert session_cookie(agent) is not None


async def test_the_single_copy_callback_signs_in(world: LoginWorld) -> None:
    before = refusals()
    async with UserAgent() as agent:
        callback = await held_at_callback(world, agent)
        assert all(len(URL(callback).query.getall(name, [])) <= 1 for name in FORGED)
        done = await agent.get(callback)
        assert done.status == 303 and session_cookie(agent) is not None
    assert refusals() == before


# --- back-channel logout ---------------------------------------------------------------------------


def forged_logout_token(world: LoginWorld) -> str:
    """A logout token for alice in the IdP's name, signed with a key the IdP never published."""
    now = int(time.time())
    claims = {"iss": world.idp.issuer, "aud": "ztproxy", "iat": now, "exp": now + 120, "jti": "forged",
              "sub": "alice", "events": {EVENT: {}}}
    key = RSAKey.generate_key(2048)
    return jwt.encode({"alg": "RS256", "typ": "logout+jwt"}, claims, key)


async def post_form(world: LoginWorld, fields: list[tuple[str, str]]) -> tuple[int, dict[str, str] | None]:
    async with aiohttp.ClientSession() as client:
        async with client.post(world.url + "/.ztproxy/backchannel-logout", data=fields) as response:
            body = await response.json() if response.content_type == "application/json" else None
            return response.status, body


@pytest.mark.parametrize("order", ["first-forged", "last-forged", "same-twice"])
async def test_a_repeated_logout_token_is_refused_and_ends_nothing(world: LoginWorld, order: str) -> None:
    async with UserAgent() as agent:
        await world.login(agent, "/app/", "alice", ALICE_PASSWORD)
        cookie = session_cookie(agent)
    genuine, forged = logout_token(world), forged_logout_token(world)
    copies = {"first-forged": [forged, genuine], "last-forged": [genuine, forged], "same-twice": [genuine, genuine]}
    with capture_logs() as logs:
        status, body = await post_form(world, [("logout_token", token) for token in copies[order]])
    # Back-Channel Logout 1.0 2.8: a bad request is a 400 with an OAuth error body.
    assert status == 400 and body is not None and body["error"] == "invalid_request"
    assert "repeated" in body["error_description"]
    assert {"event": "backchannel_logout_refused", "reason": "repeated-parameter", "parameter": "logout_token",
            "log_level": "warning"} in logs
    assert await api_status(world, cookie) == 200
    # Nothing was spent either: the genuine token, sent alone, ends the session.
    assert await post_form(world, [("logout_token", genuine)]) == (200, None)
    assert await api_status(world, cookie) == 401

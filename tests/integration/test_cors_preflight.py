"""CORS preflights on routes that need a session: forwarded only where the route says so.

Browsers send a preflight (OPTIONS with Origin and Access-Control-Request-Method) without
cookies, so on a signed-in route it would meet a 401 and every cross-origin call to the app
would fail. ``cors_allow_preflight: true`` forwards it to the app, anonymously: identity
headers a client sent are stripped and none are added, even when a session came along.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from tests.conftest import ProxyFactory, UpstreamFactory
from tests.integration.login_env import ROUTES, LoginWorld, start_world
from tests.support.idp import ALICE_PASSWORD, IdpFactory
from tests.support.user_agent import UserAgent
from ztproxy import authorize

pytestmark = pytest.mark.integration

CORS_ROUTES = ROUTES + """
  - name: api
    path: /api
    upstream: {upstream}
    allow: [{{email_domains: [corp.example]}}]
    cors_allow_preflight: true
"""
PREFLIGHT = {"Origin": "https://spa.corp.example", "Access-Control-Request-Method": "PUT",
             "Access-Control-Request-Headers": "content-type", "X-Ztproxy-User": "forged", "X_Ztproxy_Email": "f"}


@pytest.fixture
async def world(start_idp: IdpFactory, start_proxy: ProxyFactory, start_upstream: UpstreamFactory) -> LoginWorld:
    return await start_world(start_idp, start_proxy, start_upstream, routes=CORS_ROUTES)


@pytest.fixture
def decisions(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    monkeypatch.setattr(authorize, "decision_event", events.append)
    return events


async def send(world: LoginWorld, method: str, path: str, headers: dict[str, str]) -> int:
    async with aiohttp.ClientSession() as client, \
            client.request(method, world.url + path, headers=headers, allow_redirects=False) as response:
        return response.status


def identity_headers_seen(world: LoginWorld) -> list[str]:
    headers = world.last_upstream_request()["headers"]
    return [name for name in headers if name.lower().replace("_", "-").startswith("x-ztproxy")]


async def test_a_preflight_reaches_the_app_anonymously(world: LoginWorld, decisions: list[dict[str, Any]]) -> None:
    assert await send(world, "OPTIONS", "/api/items/1", PREFLIGHT) == 200
    assert world.last_upstream_request()["path"] == "/api/items/1"
    assert identity_headers_seen(world) == []
    event = decisions[-1]
    assert event["preflight"] is True and event["decision"] == "allow"
    assert tuple(event["reasons"]) == ("cors-preflight",)


@pytest.mark.parametrize(("method", "path", "headers"), [
    ("OPTIONS", "/app/items", PREFLIGHT),  # the route does not forward preflights
    ("OPTIONS", "/api/items", {"Origin": "https://spa.corp.example"}),  # no Access-Control-Request-Method
    ("OPTIONS", "/api/items", {"Access-Control-Request-Method": "PUT"}),  # no Origin
    ("GET", "/api/items", PREFLIGHT),  # not OPTIONS
    ("PUT", "/api/items", PREFLIGHT),
])
async def test_anything_else_still_needs_a_session(world: LoginWorld, method: str, path: str,
                                                   headers: dict[str, str]) -> None:
    assert await send(world, method, path, {**headers, "Accept": "application/json"}) == 401
    assert world.upstream.requests == []


async def test_a_session_that_comes_with_a_preflight_is_not_passed_on(world: LoginWorld) -> None:
    async with UserAgent() as agent:
        signed_in = await world.login(agent, "/app/", "alice", ALICE_PASSWORD)
        assert signed_in.status == 200
        assert any(name.lower() == "x-ztproxy-jwt-assertion" for name in world.last_upstream_request()["headers"])
        cookie = next(c.value for c in agent.cookie_jar if c.key == "ztproxy_session")
        assert await send(world, "OPTIONS", "/api/items", {**PREFLIGHT, "Cookie": f"ztproxy_session={cookie}"}) == 200
        assert world.last_upstream_request()["path"] == "/api/items"
        assert identity_headers_seen(world) == []

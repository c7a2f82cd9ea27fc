"""``/.ztproxy/me``: identity, sign-in age, MFA, device, and only the applications this user can use."""

from __future__ import annotations

import time

import aiohttp
import pytest

from tests.conftest import ProxyFactory, UpstreamFactory
from tests.integration.login_env import LoginWorld, start_world
from tests.support.idp import ALICE_PASSWORD, IdpFactory
from tests.support.user_agent import UserAgent


@pytest.fixture
async def world(start_idp: IdpFactory, start_proxy: ProxyFactory, start_upstream: UpstreamFactory) -> LoginWorld:
    return await start_world(start_idp, start_proxy, start_upstream)


async def test_anonymous_visitors_see_only_public_applications(world: LoginWorld) -> None:
    async with aiohttp.ClientSession() as client:
        async with client.get(world.url + "/.ztproxy/me", headers={"Accept": "application/json"}) as response:
            assert response.status == 200 and response.headers["Cache-Control"] == "no-store"
            data = await response.json()
    assert data["signed_in"] is False and "device" not in data
    assert [app["name"] for app in data["applications"]] == ["public"]


async def test_a_signed_in_user_sees_who_they_are_and_where_they_may_go(world: LoginWorld) -> None:
    async with UserAgent() as agent:
        await world.login(agent, "/app/", "alice", ALICE_PASSWORD)
        async with agent.session.get(world.url + "/.ztproxy/me", headers={"Accept": "application/json"}) as response:
            data = await response.json()
        page = await agent.get(world.url + "/.ztproxy/me")
    assert data["subject"] == "alice" and data["email"] == "alice@corp.example"
    assert data["groups"] == ["employees"] and data["mfa"] is False
    assert abs(data["auth_time"] - time.time()) < 30
    access = {app["name"]: app["access"] for app in data["applications"]}
    assert access == {"app": "yes", "fresh": "yes", "mfa": "after signing in again", "alices-only": "yes",
                      "public": "yes"}
    assert data["applications"][0]["url"] == world.url + "/app"
    # Routes that refuse her are not even named.
    assert "payroll" not in page.text
    assert page.status == 200 and "alice@corp.example" in page.text and "Second factor" in page.text
    assert "Sign out" in page.text
    # Each application is a link to it; the sign-in age reads as people write it.
    assert f'<a href="{world.url}/app">app</a>' in page.text
    assert " seconds ago" in page.text or "1 second ago" in page.text or "0 seconds ago" in page.text
    assert "1 seconds" not in page.text

"""Session metrics from real sign-ins: active sessions, endings by reason, the revocation delay."""

from __future__ import annotations

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ProxyFactory, UpstreamFactory
from tests.integration.login_env import start_world
from tests.support.idp import ALICE_PASSWORD, IdpFactory
from tests.support.user_agent import UserAgent
from ztproxy import metrics


def sample(name: str, **labels: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        for found in family.samples:
            if found.name == name and all(found.labels.get(k) == v for k, v in labels.items()):
                total += found.value
    return total


async def test_sign_in_back_channel_logout_and_the_delay_to_the_first_refusal(
        start_idp: IdpFactory, start_proxy: ProxyFactory, start_upstream: UpstreamFactory) -> None:
    world = await start_world(start_idp, start_proxy, start_upstream)
    completed = sample("ztproxy_logins_total", result="completed")
    ended = sample("ztproxy_sessions_ended_total", reason="backchannel")
    delays = sample("ztproxy_revocation_delay_seconds_count")
    as_person = sample("ztproxy_requests_total", status="200", caller="person")
    async with UserAgent() as agent:
        await world.login(agent, "/app/", "alice", ALICE_PASSWORD)
        cookie = next(c.value for c in agent.cookie_jar if c.key == "ztproxy_session")
    assert sample("ztproxy_logins_total", result="completed") == completed + 1
    assert sample("ztproxy_requests_total", status="200", caller="person") == as_person + 1  # the signed-in page
    assert sample("ztproxy_sessions_active") >= 1
    await world.idp.end_sessions("alice")
    assert sample("ztproxy_sessions_ended_total", reason="backchannel") == ended + 1
    async with aiohttp.ClientSession() as client:
        for _ in range(2):  # only the first refusal is timed
            async with client.get(world.url + "/app/", headers={"Cookie": f"ztproxy_session={cookie}"},
                                  allow_redirects=False) as response:
                assert response.status == 401
    assert sample("ztproxy_revocation_delay_seconds_count") == delays + 1


async def test_assertions_are_signed_once_per_session_and_route(
        start_idp: IdpFactory, start_proxy: ProxyFactory, start_upstream: UpstreamFactory) -> None:
    world = await start_world(start_idp, start_proxy, start_upstream)
    async with UserAgent() as agent:
        await world.login(agent, "/app/", "alice", ALICE_PASSWORD)
        signs = sample("ztproxy_assertion_signs_total")
        for _ in range(10):
            assert (await agent.get(world.url + "/app/x")).status == 200
        assert sample("ztproxy_assertion_signs_total") == signs  # the cached assertion, ten times
        assert (await agent.get(world.url + "/alice/x")).status == 200
        assert sample("ztproxy_assertion_signs_total") == signs + 1  # another route, another audience

"""Provider presets at work against a scripted OP: Entra's groups from Graph, Google's hosted domain.

- Entra with a groups overage (``_claim_names`` instead of ``groups``): the groups come from a
  local Microsoft Graph, page after page, at sign-in and again at each refresh; a Graph that
  fails (500, no answer in time, an answer too large, a refusal) fails the sign-in with the
  sign-in-unavailable page and an event, never a session without its groups.
- Google: the ``hd`` parameter is sent, and an ID token without the Workspace domain's ``hd``
  claim (a personal account) or with another one is refused.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from aiohttp import web
from structlog.testing import capture_logs
from yarl import URL

from tests.conftest import ProxyFactory, UpstreamFactory
from tests.support.graph import ScriptedGraph, group, role
from tests.support.rogue_op import RogueOp, start_rogue_world
from tests.support.user_agent import Response, UserAgent

pytestmark = pytest.mark.integration

TENANT = "3f1c0a52-1d2e-4b7a-9c3e-0123456789ab"
OVERAGE = {"_claim_names": {"groups": "src1"},
           "_claim_sources": {"src1": {"endpoint": f"https://graph.windows.net/{TENANT}/users/u/getMemberObjects"}}}


@pytest.fixture
async def runners() -> AsyncIterator[list[web.AppRunner]]:
    started: list[web.AppRunner] = []
    yield started
    for runner in started:
        await runner.cleanup()


async def entra(start_proxy: ProxyFactory, start_upstream: UpstreamFactory, runners: list[web.AppRunner],
                graph: ScriptedGraph, *, claims: dict[str, Any], options: str = "", provider: str = "",
                sessions: str = "") -> tuple[RogueOp, Any]:
    runners.append(await graph.start())
    op = RogueOp(client_secret="entra-s3cret", id_token_claims=claims, refresh_tokens=True)
    _, proxy, runner = await start_rogue_world(
        op, start_proxy, start_upstream, issuer_path=f"/{TENANT}/v2.0", sessions=sessions,
        provider=f", preset: entra, entra: {{graph_url: '{graph.url}'{options}}}{provider}")
    runners.append(runner)
    return op, proxy


def upstream_groups(final: Response) -> list[str]:
    """The groups the upstream was told, from the echo of its request headers."""
    headers = {name.lower(): value for name, value in orjson.loads(final.text)["headers"]}
    return headers.get("x-ztproxy-groups", "").split(",") if headers.get("x-ztproxy-groups") else []


async def test_entra_overage_reads_graph_page_by_page_at_sign_in_and_at_refresh(
        start_proxy: ProxyFactory, start_upstream: UpstreamFactory, runners: list[web.AppRunner]) -> None:
    graph = ScriptedGraph(pages=[[group("g-1", "Eng"), role("r-1")], [group("g-2", "Ops"),
                                                                      group("m-1", "Team", security=False)]])
    _, proxy = await entra(start_proxy, start_upstream, runners, graph, claims=OVERAGE,
                           sessions="{refresh_interval: 1s}")
    async with UserAgent() as agent:
        final = await agent.navigate(proxy.url + "/app/")
        assert final.status == 200, final.text[:300]
        assert upstream_groups(final) == ["g-1", "g-2"]  # security groups only, both pages
        first, second = graph.requests
        assert first["authorization"].startswith("Bearer at-") and "refresh" not in first["authorization"]
        assert first["query"]["$select"] == "id,displayName,securityEnabled"
        assert second["query"]["$skiptoken"] == "1"

        graph.pages = [[group("g-3", "Sec")]]  # the user's memberships changed at the IdP
        await asyncio.sleep(1.2)
        final = await agent.navigate(proxy.url + "/app/")
        assert final.status == 200, final.text[:300]
        assert upstream_groups(final) == ["g-3"]
        assert graph.requests[-1]["authorization"].startswith("Bearer at-refresh-")


async def test_entra_without_overage_takes_the_token_groups(
        start_proxy: ProxyFactory, start_upstream: UpstreamFactory, runners: list[web.AppRunner]) -> None:
    graph = ScriptedGraph(pages=[[group("g-graph", "Graph")]])
    _, proxy = await entra(start_proxy, start_upstream, runners, graph, claims={"groups": ["g-token"]})
    async with UserAgent() as agent:
        final = await agent.navigate(proxy.url + "/app/")
    assert final.status == 200 and upstream_groups(final) == ["g-token"]
    assert graph.requests == []


async def test_entra_display_names_come_from_graph(
        start_proxy: ProxyFactory, start_upstream: UpstreamFactory, runners: list[web.AppRunner]) -> None:
    graph = ScriptedGraph(pages=[[group("g-1", "Engineering"), group("g-2", "Payroll Admins")]])
    _, proxy = await entra(start_proxy, start_upstream, runners, graph, claims={"groups": ["g-1", "g-2"]},
                           options=", group_names: display_names")
    async with UserAgent() as agent:
        final = await agent.navigate(proxy.url + "/app/")
    assert final.status == 200 and upstream_groups(final) == ["Engineering", "Payroll Admins"]


@pytest.mark.parametrize(("mode", "event", "title"), [
    ("error", "graph_bad_status", "Sign-in unavailable"),
    ("slow", "graph_unreachable", "Sign-in unavailable"),
    ("oversize", "graph_response_too_large", "Sign-in unavailable"),
    ("refused", "graph_refused", "Sign-in is misconfigured"),
])
async def test_a_graph_that_fails_fails_the_sign_in(start_proxy: ProxyFactory, start_upstream: UpstreamFactory,
                                                    runners: list[web.AppRunner], mode: str, event: str,
                                                    title: str) -> None:
    graph = ScriptedGraph(pages=[[group("g-1", "Eng")]], mode=mode, delay=3.0)
    _, proxy = await entra(start_proxy, start_upstream, runners, graph, claims=OVERAGE,
                           provider=", http_timeout: 1s, max_response: 64KiB")
    with capture_logs() as logs:
        async with UserAgent() as agent:
            final = await agent.navigate(proxy.url + "/app/")
            assert final.status == 503 and title in final.text, final.text[:300]
            assert agent.cookie_jar.filter_cookies(URL(proxy.url)).get("ztproxy_session") is None  # no session
    assert event in [entry["event"] for entry in logs]


@pytest.mark.parametrize(("claims", "reason"), [({"hd": "corp.example"}, None), ({}, "hd-missing"),
                                                ({"hd": "other.example"}, "hd-mismatch")])
async def test_google_requires_the_hosted_domain(start_proxy: ProxyFactory, start_upstream: UpstreamFactory,
                                                 runners: list[web.AppRunner], claims: dict[str, Any],
                                                 reason: str | None) -> None:
    op = RogueOp(client_secret="google-s3cret", id_token_claims=claims)
    with capture_logs() as logs:
        _, proxy, runner = await start_rogue_world(op, start_proxy, start_upstream,
                                                   provider=", preset: google, google: {hosted_domain: corp.example}")
        runners.append(runner)
        async with UserAgent() as agent:
            final = await agent.navigate(proxy.url + "/app/")
    [query] = op.authorize_queries
    assert query["hd"] == "corp.example" and query["access_type"] == "offline"
    if reason is None:
        assert final.status == 200, final.text[:300]
        return
    assert final.status == 400 and "Sign-in failed" in final.text and "work account" in final.text
    refused = [entry for entry in logs if entry["event"] == "login_refused"]
    assert [entry["reason"] for entry in refused] == [reason]

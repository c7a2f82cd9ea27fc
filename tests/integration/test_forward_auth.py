"""Forward-auth: /.ztproxy/auth judging the original request a calling proxy describes.

The calling proxy is played here by plain requests carrying its headers (nginx's
``X-Original-*``, Traefik's and Caddy's ``X-Forwarded-*``, Envoy's path prefix); the
real servers are in tests/e2e. The IdP is the real one, the sessions real sign-ins.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import quote

import aiohttp
import jwt
import pytest

from tests.conftest import ProxyFactory, UpstreamFactory, free_port
from tests.integration.login_env import LoginWorld, start_world
from tests.integration.test_process import StartProcess, process_yaml
from tests.support.idp import ALICE_PASSWORD, IdpFactory
from tests.support.user_agent import BROWSER_ACCEPT, UserAgent
from tests.unit.test_metrics import changes, scrape

pytestmark = pytest.mark.integration

IDENTITY = ("X-Ztproxy-Jwt-Assertion", "X-Ztproxy-User", "X-Ztproxy-Email", "X-Ztproxy-Groups")
UNTRUSTED_ADDRESS = "127.0.0.2"  # a client outside trusted_proxies, on this machine


@pytest.fixture
async def world(start_idp: IdpFactory, start_proxy: ProxyFactory, start_upstream: UpstreamFactory) -> LoginWorld:
    # The calling proxy (this test's client) is on 127.0.0.1; 127.0.0.2 is anyone else.
    return await start_world(start_idp, start_proxy, start_upstream,
                             server="  trusted_proxies: [127.0.0.1/32]")


@pytest.fixture
async def alice(world: LoginWorld) -> AsyncIterator[UserAgent]:
    async with UserAgent() as agent:
        page = await agent.login(f"{world.url}/.ztproxy/start?rd={quote(world.url + '/app/home', safe='')}",
                                 "alice", ALICE_PASSWORD)
        assert page.status == 200 and page.url == f"{world.url}/app/home"
        yield agent


async def ask(agent: aiohttp.ClientSession | UserAgent, world: LoginWorld, path: str, *, method: str = "GET",
              browser: bool = True, headers: dict[str, str] | None = None, endpoint: str = "/.ztproxy/auth",
              ) -> tuple[int, aiohttp.typedefs.LooseHeaders, str]:
    """nginx's auth_request: the original URL and method in X-Original-* headers."""
    session = agent.session if isinstance(agent, UserAgent) else agent
    sent = {"X-Original-URL": world.url + path, "X-Original-Method": method,
            "Accept": BROWSER_ACCEPT if browser else "application/json", **(headers or {})}
    async with session.get(world.url + endpoint, headers=sent, allow_redirects=False) as response:
        return response.status, response.headers, await response.text()


async def test_a_signed_in_request_is_allowed_with_every_identity_header(world: LoginWorld,
                                                                         alice: UserAgent) -> None:
    upstream_requests = len(world.upstream.requests)
    status, headers, body = await ask(alice, world, "/app/page?x=1",
                                      headers={"X-Ztproxy-User": "mallory", "X_Ztproxy_User": "mallory"})
    assert status == 200 and body == ""
    assert headers["X-Ztproxy-User"]  # the subject at the IdP
    assert headers["X-Ztproxy-Email"] == "alice@corp.example"
    assert "employees" in headers["X-Ztproxy-Groups"].split(",")
    claims = jwt.decode(headers["X-Ztproxy-Jwt-Assertion"], options={"verify_signature": False})
    assert claims["email"] == "alice@corp.example" and claims["route"] == "app"
    assert "mallory" not in str(dict(headers))
    assert headers["Cache-Control"] == "no-store"  # a decision is never replayed from a cache
    assert len(world.upstream.requests) == upstream_requests  # the proxy forwards nothing itself


async def test_a_public_route_answers_every_identity_header_empty(world: LoginWorld) -> None:
    async with aiohttp.ClientSession() as client:
        status, headers, _ = await ask(client, world, "/public/x", headers={"X-Ztproxy-User": "mallory"})
    assert status == 200
    for name in IDENTITY:
        assert headers.getall(name) == [""]  # present, so the calling proxy's copy overwrites the client's


async def test_a_browser_that_must_sign_in_is_told_where_nginx_sends_it(world: LoginWorld) -> None:
    async with aiohttp.ClientSession() as client:
        status, headers, _ = await ask(client, world, "/app/deep?q=1")
        assert status == 401  # nginx would turn a redirect into its own 500
        start = headers["X-Ztproxy-Sign-In"]
        assert start == f"{world.url}/.ztproxy/start?rd={quote(world.url + '/app/deep?q=1', safe='')}"
        # An API client gets the challenge alone, which nginx passes on.
        status, headers, _ = await ask(client, world, "/app/deep", browser=False)
        assert status == 401 and "X-Ztproxy-Sign-In" not in headers
        assert headers["WWW-Authenticate"].startswith("Bearer")
    async with UserAgent() as agent:
        page = await agent.login(start, "alice", ALICE_PASSWORD)
        assert page.url == f"{world.url}/app/deep?q=1"  # back where the request was going


async def test_a_refusal_is_403_and_the_denied_page_explains_it_without_a_second_decision(
        world: LoginWorld, alice: UserAgent) -> None:
    before = scrape()
    status, _, _ = await ask(alice, world, "/payroll-group/x")
    assert status == 403
    status, _, page = await ask(alice, world, "/payroll-group/x", endpoint="/.ztproxy/denied")
    assert status == 403
    assert "not in a group this application requires" in page and "alice@corp.example" in page
    status, headers, body = await ask(alice, world, "/payroll-group/x", endpoint="/.ztproxy/denied", browser=False)
    assert status == 403 and "not in a group this application requires" in body
    delta = changes(before, scrape())
    assert delta("ztproxy_denials_total", route="payroll-group", reason="group-missing") == 1


async def test_step_up_is_asked_for_as_a_sign_in(world: LoginWorld, alice: UserAgent) -> None:
    status, headers, _ = await ask(alice, world, "/mfa/x")
    assert status == 401 and "/.ztproxy/start?rd=" in headers["X-Ztproxy-Sign-In"]
    status, headers, _ = await ask(alice, world, "/mfa/x", browser=False)
    assert status == 401 and 'error="insufficient_user_authentication"' in headers["WWW-Authenticate"]


async def test_the_original_method_is_judged(start_idp: IdpFactory, start_proxy: ProxyFactory,
                                             start_upstream: UpstreamFactory) -> None:
    routes = """
routes:
  - {{name: read-only, path: /, upstream: "{upstream}", allow: [{{public: true, methods: [GET, HEAD]}}]}}
"""
    world = await start_world(start_idp, start_proxy, start_upstream, routes=routes,
                              server="  trusted_proxies: [127.0.0.1/32]")
    async with aiohttp.ClientSession() as client:
        assert (await ask(client, world, "/doc", method="GET"))[0] == 200
        assert (await ask(client, world, "/doc", method="DELETE", browser=False))[0] == 403


async def test_paths_the_proxy_would_refuse_are_403_in_nginx_form(world: LoginWorld, alice: UserAgent) -> None:
    for bad in ("/app/a%2Fb", "/app/%00", "/app/x#frag"):
        status, _, _ = await ask(alice, world, bad)
        assert status == 403, bad
    # A description that is not a URL at all, or a method that is not one.
    async with aiohttp.ClientSession() as client:
        async with client.get(world.url + "/.ztproxy/auth", headers={"X-Original-URL": "/relative"}) as response:
            assert response.status == 403
        assert (await ask(client, world, "/public/x", method="GET X"))[0] == 403


async def test_from_an_untrusted_peer_the_description_is_ignored(world: LoginWorld) -> None:
    connector = aiohttp.TCPConnector(local_addr=(UNTRUSTED_ADDRESS, 0))
    async with aiohttp.ClientSession(connector=connector) as stranger:
        for endpoint in ("/.ztproxy/auth", "/.ztproxy/auth/public/x"):
            status, headers, _ = await ask(stranger, world, "/public/x", endpoint=endpoint,
                                           headers={"X-Forwarded-Uri": "/public/x", "Host": "127.0.0.1"})
            assert status == 403, endpoint  # judged as a request for the endpoint itself
            assert "X-Ztproxy-User" not in headers


async def test_traefik_and_caddy_describe_with_forwarded_headers(world: LoginWorld, alice: UserAgent) -> None:
    host = world.url.removeprefix("http://")
    described = {"X-Forwarded-Method": "GET", "X-Forwarded-Proto": "http", "X-Forwarded-Host": host,
                 "X-Forwarded-Uri": "/app/page", "Accept": BROWSER_ACCEPT}
    async with alice.session.get(world.url + "/.ztproxy/auth", headers=described, allow_redirects=False) as allowed:
        assert allowed.status == 200 and allowed.headers["X-Ztproxy-Email"] == "alice@corp.example"
    async with aiohttp.ClientSession() as client:
        # They pass any answer to the client as it is: a browser is redirected to sign in.
        async with client.get(world.url + "/.ztproxy/auth", headers=described, allow_redirects=False) as response:
            assert response.status == 302
            assert response.headers["Location"] == response.headers["X-Ztproxy-Sign-In"]
            assert "/.ztproxy/start?rd=" in response.headers["Location"]
        async with client.get(world.url + "/.ztproxy/auth", headers={**described, "X-Forwarded-Uri": "/app/%2F"},
                              allow_redirects=False) as response:
            assert response.status == 400  # not nginx: the real page, which they show the client


async def test_envoy_puts_the_original_path_after_the_endpoint(world: LoginWorld, alice: UserAgent) -> None:
    async with alice.session.get(world.url + "/.ztproxy/auth/app/page?x=1", allow_redirects=False) as response:
        assert response.status == 200 and response.headers["X-Ztproxy-Email"] == "alice@corp.example"
    async with alice.session.get(world.url + "/.ztproxy/auth/payroll-group/x", allow_redirects=False) as response:
        assert response.status == 403


async def test_start_returns_only_to_the_proxys_own_hosts(world: LoginWorld, alice: UserAgent) -> None:
    signed_in = await alice.get(f"{world.url}/.ztproxy/start?rd={quote(world.url + '/app/there', safe='')}")
    assert signed_in.status == 302 and signed_in.location == world.url + "/app/there"
    for rd in ("https://evil.example/", "//evil.example/", "/app/relative", ""):
        response = await alice.get(f"{world.url}/.ztproxy/start?rd={quote(rd, safe='')}")
        assert response.status in (400, 404), rd
        assert "evil" not in (response.location or "")
    twice = await alice.get(f"{world.url}/.ztproxy/start?rd=a&rd=b")
    assert twice.status == 400


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_the_decision_listener_answers_decisions_and_health_only(start_upstream: UpstreamFactory,
                                                                       proxy_process: StartProcess,
                                                                       workers: str) -> None:
    upstream = await start_upstream()
    decisions = f"127.0.0.1:{free_port()}"
    proxy = proxy_process(process_yaml(upstream.url, extra_server=f"  auth_listen: {decisions}\n"
                                                                  "  trusted_proxies: [127.0.0.1/32]"),
                          "--workers", workers)
    original = {"X-Original-URL": f"{proxy.url}/any/page", "X-Original-Method": "GET"}
    async with aiohttp.ClientSession() as client:
        for _ in range(4):  # new connections: with two workers, both answer
            async with client.get(f"http://{decisions}/.ztproxy/auth", headers={**original, "Connection": "close"}
                                  ) as response:
                assert response.status == 200 and response.headers.getall("X-Ztproxy-User") == [""]
        async with client.get(f"http://{decisions}/.ztproxy/auth/any/page") as response:
            assert response.status == 200  # Envoy's form
        async with client.get(f"http://{decisions}/healthz") as response:
            assert response.status == 200
        for path in ("/any/page", "/.ztproxy/me", "/.ztproxy/start?rd=x", "/.ztproxy/auth/../me",
                     "/.well-known/ztproxy/jwks.json"):
            async with client.get(f"http://{decisions}{path}", headers=original) as response:
                assert response.status == 404, path
        assert upstream.requests == []  # nothing is ever forwarded from there
        # The proxy listener still proxies.
        async with client.get(f"{proxy.url}/any/page") as response:
            assert response.status == 200 and len(upstream.requests) == 1

"""Every response the proxy makes itself carries the same protective headers; the app's pass as they are.

Walks every kind of page and answer: error pages and JSON errors, the deny page, the
sign-in redirect, the sign-in-failed page, the callback's redirect, /.ztproxy/me, the
sign-out pages, and the HTTP parser's own refusals.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import ProxyFactory, UpstreamFactory, raw_exchange
from tests.integration.login_env import ROUTES, LoginWorld, start_world
from tests.support.idp import ALICE_PASSWORD, IdpFactory
from tests.support.scripted_upstream import ScriptedUpstream, respond_in_turn
from tests.support.user_agent import Response, UserAgent
from ztproxy.pages import SECURITY_HEADERS

pytestmark = pytest.mark.integration

EXPECTED = {
    "content-security-policy": lambda value: "frame-ancestors 'none'" in value and "default-src 'none'" in value,
    "x-frame-options": lambda value: value == "DENY",
    "referrer-policy": lambda value: value == "no-referrer",
    "cache-control": lambda value: value == "no-store",
    "x-content-type-options": lambda value: value == "nosniff",
}
PAGE_ROUTES = ROUTES + """
  - name: down
    path: /down
    upstream: http://127.0.0.1:9
    allow: [{{public: true}}]
  - name: branded
    path: /branded
    upstream: {{branded}}
    allow: [{{public: true}}]
  - name: nameless
    path: /nameless
    upstream: {{nameless}}
    allow: [{{public: true}}]
"""


def check(what: str, status: int, headers: dict[str, str] | aiohttp.typedefs.LooseHeaders) -> None:
    lowered = {name.lower(): value for name, value in dict(headers).items()}  # type: ignore[arg-type]
    for name, holds in EXPECTED.items():
        assert name in lowered and holds(lowered[name]), (what, status, name, lowered.get(name))
    server = lowered.get("server", "")
    assert "python" not in server.lower() and "aiohttp" not in server.lower(), (what, server)


def seen(response: Response) -> dict[str, str]:
    return dict(response.headers.items())


@pytest.fixture
async def world(start_idp: IdpFactory, start_proxy: ProxyFactory,
                start_upstream: UpstreamFactory) -> AsyncIterator[LoginWorld]:
    async def branded(request: web.Request) -> web.StreamResponse:
        return web.Response(text="app", headers={"Server": "wiki/2.1"})

    app = await start_upstream(branded)
    # An app whose answers name no server at all (aiohttp's own server always names itself).
    nameless = await ScriptedUpstream(respond_in_turn(*[b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"] * 4)).start()
    routes = PAGE_ROUTES.replace("{{branded}}", app.url).replace("{{nameless}}", f"http://127.0.0.1:{nameless.port}")
    yield await start_world(start_idp, start_proxy, start_upstream, routes=routes)
    await nameless.close()


async def fetch(url: str, accept: str) -> tuple[int, dict[str, str]]:
    async with aiohttp.ClientSession() as client, \
            client.get(url, headers={"Accept": accept}, allow_redirects=False) as response:
        return response.status, dict(response.headers.items())


def test_the_expectations_cover_every_security_header() -> None:
    assert {name.lower() for name, _ in SECURITY_HEADERS} == set(EXPECTED)


async def test_every_page_and_answer_of_the_proxy(world: LoginWorld) -> None:
    url = world.url
    for path, accept, status in (("/nowhere", "text/html", 404), ("/nowhere", "application/json", 404),
                                 ("/app/", "application/json", 401), ("/down/", "text/html", 502),
                                 ("/.ztproxy/nope", "text/html", 404), ("/app/a%2Fb", "text/html", 400)):
        got, headers = await fetch(url + path, accept)
        assert got == status, (path, got)
        check(f"GET {path} ({accept})", got, headers)
    async with UserAgent() as anonymous:
        redirect = await anonymous.get(url + "/app/")  # the sign-in redirect to the IdP
        assert redirect.status == 302
        check("sign-in redirect", 302, seen(redirect))
        failed = await anonymous.get(url + "/.ztproxy/callback?code=x&state=forged")
        assert failed.status == 400 and "Sign-in failed" in failed.text
        check("sign-in failed", 400, seen(failed))
        me = await anonymous.get(url + "/.ztproxy/me")
        check("me, signed out", me.status, seen(me))
        signed_out = await anonymous.get(url + "/.ztproxy/signed-out")
        assert signed_out.status == 200
        check("signed out", 200, seen(signed_out))

    async with UserAgent() as alice:
        signed_in = await world.login(alice, "/app/", "alice", ALICE_PASSWORD)
        assert signed_in.status == 200
        back = [hop for hop in alice.history if "/.ztproxy/callback" in hop.url]
        assert back and back[-1].status == 303
        check("callback redirect", 303, seen(back[-1]))
        me = await alice.get(url + "/.ztproxy/me")
        assert me.status == 200
        check("me", 200, seen(me))
        denied = await alice.get(url + "/payroll-group/")
        assert denied.status == 403
        assert '<a href="/.ztproxy/me">' in denied.text  # what to do next is a link, not text to copy
        payroll = await alice.get(url + "/payroll/")  # needs the payroll group and a second factor
        assert payroll.status == 403 and "not in a group" in payroll.text
        assert "second factor" not in payroll.text  # a new sign-in would not help: no noise about one
        check("deny page", 403, seen(denied))
        logout = await alice.get(url + "/.ztproxy/logout")
        assert logout.status == 200
        check("sign-out page", 200, seen(logout))


async def test_the_parsers_refusals_carry_them_too(world: LoginWorld) -> None:
    data, _ = await raw_exchange(world.proxy.port, b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n"
                                                   b"Transfer-Encoding: chunked\r\n\r\n")
    head = data.partition(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
    assert head[0].startswith("HTTP/1.") and " 400 " in head[0], head
    check("parser refusal", 400, dict(line.split(": ", 1) for line in head[1:]))


async def test_the_apps_own_responses_pass_as_they_are(world: LoginWorld) -> None:
    async with aiohttp.ClientSession() as client:
        async with client.get(world.url + "/branded/") as response:
            assert response.status == 200
            assert response.headers["Server"] == "wiki/2.1"
            assert "X-Frame-Options" not in response.headers and "Content-Security-Policy" not in response.headers
        async with client.get(world.url + "/nameless/") as response:
            assert response.status == 200
            server = response.headers.get("Server", "")
            assert "python" not in server.lower() and "aiohttp" not in server.lower(), server

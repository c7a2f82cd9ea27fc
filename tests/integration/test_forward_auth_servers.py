"""Forward-auth behind Debian's nginx (auth_request) and Caddy (forward_auth), configured by
``ztproxy forward-auth nginx|caddy``.

The whole journey goes through nginx: sign-in at the real IdP, the app receiving the
identity nginx copied from ztproxy's answer, refusals explained by /.ztproxy/denied,
step-up with a one-time code, sign-out; and the spoofing cases: whatever identity or
original-request headers a client sends, the app sees only what ztproxy decided.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import jwt
import orjson
import pytest

from tests.conftest import ProxyFactory, UpstreamFactory
from tests.integration.forward_auth_env import KINDS, Site, start_site
from tests.support.caddy import CaddyFactory
from tests.support.idp import ALICE_PASSWORD, BOB_PASSWORD, BOB_TOTP_SECRET, IdpFactory
from tests.support.nginx import NginxFactory
from tests.support.user_agent import BROWSER_ACCEPT, UserAgent

pytestmark = pytest.mark.integration


@pytest.fixture(params=KINDS)
async def site(request: pytest.FixtureRequest, start_idp: IdpFactory, start_proxy: ProxyFactory,
               start_upstream: UpstreamFactory, start_nginx: NginxFactory, start_caddy: CaddyFactory) -> Site:
    return await start_site(request.param, start_idp, start_proxy, start_upstream, start_nginx, start_caddy)


def app_saw(response_text: str) -> dict[str, Any]:
    data = orjson.loads(response_text)
    assert isinstance(data, dict)
    return {"path": data["path"], "headers": {name.lower(): value for name, value in data["headers"]}}


async def test_sign_in_through_nginx_and_the_app_receives_the_identity(site: Site) -> None:
    async with UserAgent() as agent:
        page = await agent.login(f"{site.url}/app/page?x=1", "alice", ALICE_PASSWORD)
        assert page.status == 200 and page.url == f"{site.url}/app/page?x=1", site.log()
        seen = app_saw(page.text)
        assert seen["path"] == "/app/page?x=1"
        headers = seen["headers"]
        assert headers["x-ztproxy-email"] == "alice@corp.example"
        assert "employees" in headers["x-ztproxy-groups"].split(",")
        claims = jwt.decode(headers["x-ztproxy-jwt-assertion"], options={"verify_signature": False})
        assert claims["email"] == "alice@corp.example" and claims["route"] == "app"
        # ztproxy's own pages work on the protected host, through nginx.
        me = await agent.get(f"{site.url}/.ztproxy/me")
        assert me.status == 200 and "alice@corp.example" in me.text


async def test_identity_and_description_headers_from_a_client_change_nothing(site: Site) -> None:
    forged = {"X-Ztproxy-User": "mallory", "x-ztproxy-email": "mallory@evil.example",
              "X-ZTPROXY-GROUPS": "payroll", "X-Ztproxy-Jwt-Assertion": "forged",
              "X_Ztproxy_User": "mallory", "X-Ztproxy_Email": "mallory@evil.example",
              "x-ztproxy-jwt_assertion": "forged", "X-Original-URL": f"{site.url}/public/x",
              "X-Original-Method": "GET", "X-Forwarded-Uri": "/public/x", "X-Forwarded-Method": "GET"}
    async with aiohttp.ClientSession() as client:
        # Anonymous, on a public route: the app sees no identity at all.
        async with client.get(f"{site.url}/public/x", headers=forged) as response:
            assert response.status == 200
            headers = app_saw(await response.text())["headers"]
            for name in ("x-ztproxy-user", "x-ztproxy-email", "x-ztproxy-groups", "x-ztproxy-jwt-assertion"):
                assert headers.get(name, "") == "", name  # none (nginx), or empty (Caddy copies an empty one)
            # Spellings that CGI and WSGI servers read as the identity headers never arrive.
            assert not [name for name in headers if "_" in name], headers
        # Anonymous, on a route that needs sign-in: describing a public one changes nothing.
        async with client.get(f"{site.url}/app/x", headers={**forged, "Accept": "application/json"},
                              allow_redirects=False) as response:
            assert response.status == 401
        # The decision endpoints cannot be called from outside.
        async with client.get(f"{site.url}/.ztproxy/auth", headers=forged) as response:
            assert response.status == 404
        async with client.get(f"{site.url}/.ztproxy/auth/public/x", headers=forged) as response:
            assert response.status == 404
    async with UserAgent() as agent:
        await agent.login(f"{site.url}/app/", "alice", ALICE_PASSWORD)
        async with agent.session.get(f"{site.url}/payroll-group/x", headers=forged) as response:
            assert response.status == 403  # a public original described by the client is not believed
        async with agent.session.get(f"{site.url}/app/x", headers=forged) as response:
            headers = app_saw(await response.text())["headers"]
            assert headers["x-ztproxy-email"] == "alice@corp.example"
            assert "payroll" not in headers["x-ztproxy-groups"]
            assert headers["x-ztproxy-jwt-assertion"] != "forged"


async def test_refusals_the_api_challenge_and_the_deny_page(site: Site) -> None:
    async with aiohttp.ClientSession() as client:
        async with client.get(f"{site.url}/app/x", headers={"Accept": "application/json"},
                              allow_redirects=False) as response:
            assert response.status == 401
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
            assert "Location" not in response.headers
        async with client.get(f"{site.url}/app/x", headers={"Accept": BROWSER_ACCEPT},
                              allow_redirects=False) as response:
            assert response.status == 302
            assert response.headers["Location"].startswith(f"{site.url}/.ztproxy/start?rd=")
    async with UserAgent() as agent:
        await agent.login(f"{site.url}/app/", "alice", ALICE_PASSWORD)
        denied = await agent.get(f"{site.url}/payroll-group/x")
        assert denied.status == 403
        assert "not in a group this application requires" in denied.text
        assert "alice@corp.example" in denied.text


async def test_step_up_with_a_one_time_code_then_sign_out(site: Site) -> None:
    async with UserAgent() as agent:
        page = await agent.login(f"{site.url}/app/", "bob", BOB_PASSWORD, BOB_TOTP_SECRET)
        assert page.status == 200
        # /payroll needs MFA: the sign-in above had none, so nginx sends bob back for his code.
        stepped = await agent.login(f"{site.url}/payroll/report", "bob", BOB_PASSWORD, BOB_TOTP_SECRET)
        assert stepped.status == 200 and stepped.url == f"{site.url}/payroll/report"
        claims = jwt.decode(app_saw(stepped.text)["headers"]["x-ztproxy-jwt-assertion"],
                            options={"verify_signature": False})
        assert claims["route"] == "payroll" and claims["amr"]
        confirm = await agent.get(f"{site.url}/.ztproxy/logout")
        form = confirm.form("csrf")
        assert form is not None and form.action.startswith(site.url)
        to_idp = await agent.request("POST", form.action, data=form.fields)
        assert to_idp.status == 303
        idp_form = (await agent.follow(to_idp)).form()
        assert idp_form is not None
        done = await agent.submit(idp_form, button="logout")
        assert done.url == f"{site.url}/.ztproxy/signed-out" and "You are signed out" in done.text
        again = await agent.get(f"{site.url}/app/")
        assert again.status == 302 and "/.ztproxy/start?rd=" in (again.location or "")

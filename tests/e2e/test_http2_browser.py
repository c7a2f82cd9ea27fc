"""A real browser over HTTP/2: headless Chromium signs in through ztproxy's TLS listener, which it reaches by ALPN h2.

The proxy serves TLS with certificates from ``tests.support.posture`` (the tab ignores that
their CA is not the system's); the demo IdP and an echoing HTTP/1.1 upstream are behind it.
The page's own navigation timing says which protocol carried it.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from playwright.async_api import Page

from tests.conftest import ProxyFactory, UpstreamFactory, free_port
from tests.e2e.conftest import BrowserTab
from tests.e2e.test_browser_login import enter_password, url_is
from tests.integration.login_env import CLIENT_ID, CLIENT_SECRET, LoginWorld
from tests.support.idp import ALICE_PASSWORD, IdpFactory
from tests.support.posture import DevicePki
from ztproxy.demo_idp import IdpClient

pytestmark = pytest.mark.integration

NEXT_HOP = "performance.getEntriesByType('navigation')[0].nextHopProtocol"


@pytest.fixture
def browser_context_options() -> dict[str, Any]:
    return {"ignore_https_errors": True}  # the test CA; the handshake and ALPN are real


@pytest.fixture
async def world(start_idp: IdpFactory, start_proxy: ProxyFactory, start_upstream: UpstreamFactory,
                device_pki: DevicePki) -> LoginWorld:
    upstream = await start_upstream()
    port = free_port()
    public = f"https://localhost:{port}"
    idp = await start_idp(clients=[IdpClient(client_id=CLIENT_ID, client_secret=CLIENT_SECRET,
                                             redirect_uris=(f"{public}/.ztproxy/callback",))])
    proxy = await start_proxy(f"""
server:
  listen: 127.0.0.1:{port}
  public_url: {public}
  admin_listen: null
  tls: {device_pki.tls_yaml(client_ca=False)}
identity_providers:
  - {{name: demo, issuer: "{idp.issuer}", client_id: {CLIENT_ID}, client_secret: {CLIENT_SECRET},
     scopes: [openid, email, profile, groups]}}
sessions:
  cookie_secrets: [0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef]
routes:
  - {{name: app, path: /app, upstream: "{upstream.url}", allow: [{{email_domains: [corp.example]}}]}}
""")
    return LoginWorld(idp=idp, proxy=proxy, upstream=upstream)


async def test_chromium_signs_in_over_h2(world: LoginWorld, browser: BrowserTab) -> None:
    public = world.proxy.config.public_url

    async def journey(page: Page) -> tuple[str, dict[str, Any], str]:
        await page.goto(public + "/app/page")
        await enter_password(page, world, "alice", ALICE_PASSWORD)
        await page.wait_for_url(url_is(public + "/app/page"))
        echo = json.loads(await page.locator("pre").first.inner_text())
        first_protocol = await page.evaluate(NEXT_HOP)
        await page.goto(public + "/app/again")
        return first_protocol, echo, await page.evaluate(NEXT_HOP)

    first, echo, again = await browser.run(journey)
    assert first == "h2" and again == "h2"
    headers = {name.lower(): value for name, value in echo["headers"]}
    assert headers["x-ztproxy-user"] == "alice" and "x-ztproxy-jwt-assertion" in headers
    assert world.proxy.config.sessions.cookie_name not in headers.get("cookie", "")
    assert [request.raw_path for request in world.upstream.requests] == ["/app/page", "/app/again"]

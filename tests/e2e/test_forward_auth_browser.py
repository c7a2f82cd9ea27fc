"""Forward-auth as a person sees it, in headless Chromium, behind Debian's nginx and Caddy.

The calling proxy runs the configuration ``ztproxy forward-auth`` prints; the browser only ever
talks to it and to the IdP. One journey per calling proxy: sign in, step up with a one-time
code, meet the deny page, sign out.
"""

from __future__ import annotations

import pyotp
import pytest
from playwright.async_api import Page, expect

from tests.conftest import ProxyFactory, UpstreamFactory
from tests.e2e.conftest import BrowserTab
from tests.e2e.test_browser_login import (
    REQUEST_ID,
    at_idp_sign_in,
    enter_code,
    enter_password,
    shown_echo,
    shown_text,
    url_is,
    url_starts,
)
from tests.integration.forward_auth_env import KINDS, Site, start_site
from tests.support.caddy import CaddyFactory
from tests.support.idp import BOB_PASSWORD, BOB_TOTP_SECRET, IdpFactory
from tests.support.nginx import NginxFactory

pytestmark = pytest.mark.integration


@pytest.fixture(params=KINDS)
async def site(request: pytest.FixtureRequest, start_idp: IdpFactory, start_proxy: ProxyFactory,
               start_upstream: UpstreamFactory, start_nginx: NginxFactory, start_caddy: CaddyFactory) -> Site:
    return await start_site(request.param, start_idp, start_proxy, start_upstream, start_nginx, start_caddy)


async def test_sign_in_step_up_deny_page_and_sign_out_through_the_calling_proxy(site: Site,
                                                                               browser: BrowserTab) -> None:
    front = site.front  # the calling proxy's address, the real IdP

    async def journey(page: Page) -> tuple[dict[str, str], dict[str, str], str]:
        await page.goto(front.url + "/app/page?x=1")
        await enter_password(page, front, "bob", BOB_PASSWORD)
        await page.wait_for_url(url_is(front.url + "/app/page?x=1"))
        signed_in = dict((await shown_echo(page))["headers"])
        # /payroll needs a second factor: back to the IdP for the code only.
        await page.goto(front.url + "/payroll/report")
        await page.wait_for_url(url_starts(front.idp.issuer + "/interaction/"))
        await expect(page.get_by_role("heading", name="Verification code")).to_be_visible()
        await enter_code(page, pyotp.TOTP(BOB_TOTP_SECRET).now())
        await page.wait_for_url(url_is(front.url + "/payroll/report"))
        stepped_up = dict((await shown_echo(page))["headers"])
        # /alice is alice's alone: the deny page, with the reason and a request id.
        response = await page.goto(front.url + "/alice/")
        assert response is not None and response.status == 403
        await expect(page.get_by_role("heading", name="Access denied")).to_be_visible()
        denied = await shown_text(page)
        # Sign out, here and at the IdP; coming back asks for the password again.
        await page.goto(front.url + "/.ztproxy/logout")
        async with page.expect_navigation():
            await page.get_by_role("button", name="Sign out").click()
        await page.wait_for_url(url_starts(front.idp.issuer + "/session/end"))
        await page.get_by_role("button", name="Sign out").click()
        await page.wait_for_url(url_is(front.url + "/.ztproxy/signed-out"))
        await expect(page.get_by_role("heading", name="You are signed out")).to_be_visible()
        await page.goto(front.url + "/app/")
        await at_idp_sign_in(page, front)
        return signed_in, stepped_up, denied

    signed_in, stepped_up, denied = await browser.run(journey)
    lower = {name.lower(): value for name, value in signed_in.items()}
    assert lower["x-ztproxy-email"] == "bob@corp.example", site.log()
    assert "payroll" in lower["x-ztproxy-groups"].split(",")
    assert {name.lower(): value for name, value in stepped_up.items()}["x-ztproxy-jwt-assertion"]
    assert "Your account is not on the list of users of this application." in denied
    assert REQUEST_ID.search(denied), denied
    # The browser never left the calling proxy and the IdP: ztproxy's own address never showed.
    assert not [url for url in browser.urls_since(0)
                if not url.startswith((front.url, front.idp.issuer))], browser.urls_since(0)

"""Sign-in as a person sees it, in a real headless Chromium: login, step-up, the deny page, logout.

The world (``tests.integration.login_env``) is the demo OpenID Provider, an upstream that echoes
each request as JSON, and ztproxy in front of it. Every check is on what the browser shows (the
page's text, its URL), holds (its cookies) or loaded (``BrowserTab.documents``, redirect hops
included), never on the proxy's insides.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import Any

import pyotp
import pytest
from playwright.async_api import Page, expect

from tests.conftest import ProxyFactory, UpstreamFactory
from tests.e2e.conftest import BrowserTab
from tests.integration.login_env import LoginWorld, start_world
from tests.support.idp import ALICE_PASSWORD, BOB_PASSWORD, BOB_TOTP_SECRET, IdpFactory

pytestmark = pytest.mark.integration

# Signing in from scratch loads 7 documents: the page asked for, the IdP's authorization endpoint,
# its login page, the password post, the authorization endpoint again, the proxy's callback, the
# page. A step-up is as many. A little room for an IdP's own hops; a redirect loop goes far past.
MAX_DOCUMENTS_PER_SIGN_IN = 10
REQUEST_ID = re.compile(r"Request id:\s*([0-9a-f]{16,})")


@pytest.fixture
async def world(start_idp: IdpFactory, start_proxy: ProxyFactory, start_upstream: UpstreamFactory) -> LoginWorld:
    return await start_world(start_idp, start_proxy, start_upstream)


# --- what a person does on the pages (these run in the browser's thread) ---------------------

def url_is(expected: str) -> Callable[[str], bool]:
    # Playwright reads a URL string as a glob, where "?" and "*" are special: compare exactly.
    return lambda url: url == expected


def url_starts(prefix: str) -> Callable[[str], bool]:
    return lambda url: url.startswith(prefix)


async def at_idp_sign_in(page: Page, world: LoginWorld) -> None:
    """The IdP's page that asks for username and password."""
    await page.wait_for_url(url_starts(world.idp.issuer + "/interaction/"))
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    await expect(page.get_by_label("Password")).to_be_visible()


async def enter_password(page: Page, world: LoginWorld, username: str, password: str) -> None:
    await at_idp_sign_in(page, world)
    await page.get_by_label("Username").fill(username)
    await page.get_by_label("Password").fill(password)
    await page.get_by_role("button", name="Sign in").click()


async def sign_in(page: Page, world: LoginWorld, path: str, username: str, password: str) -> None:
    """Open ``path`` signed out, sign in with a password only, and be back on ``path``."""
    await page.goto(world.url + path)
    await enter_password(page, world, username, password)
    await page.wait_for_url(url_is(world.url + path))


async def enter_code(page: Page, code: str) -> None:
    await page.get_by_label("Code").fill(code)
    await page.get_by_role("button", name="Verify").click()


async def shown_echo(page: Page) -> dict[str, Any]:
    """The upstream's echo of the request, as the page shows it (Chromium shows a JSON body as text)."""
    data = json.loads(await page.locator("pre").first.inner_text())
    assert isinstance(data, dict)
    return data


async def shown_text(page: Page) -> str:
    return await page.locator("body").inner_text()


def wrong_code(secret: str, now: float) -> str:
    """A well-formed code the IdP must refuse: valid neither now nor within two steps either side."""
    totp = pyotp.TOTP(secret)
    valid = {totp.at(now + steps * totp.interval) for steps in range(-2, 3)}
    return next(code for code in ("000000", "111111", "222222", "333333", "444444", "555555") if code not in valid)


# --- the journeys ------------------------------------------------------------------------------

async def test_sign_in_returns_to_the_page_asked_for_with_an_httponly_cookie(world: LoginWorld,
                                                                              browser: BrowserTab) -> None:
    cookie_name = world.proxy.config.sessions.cookie_name

    async def journey(page: Page) -> tuple[dict[str, Any], str, list[Any]]:
        await page.goto(world.url + "/app/page?x=1")
        await enter_password(page, world, "alice", ALICE_PASSWORD)
        await page.wait_for_url(url_is(world.url + "/app/page?x=1"))
        return await shown_echo(page), await page.evaluate("document.cookie"), await page.context.cookies()

    echo, script_cookies, cookies = await browser.run(journey)
    assert echo["method"] == "GET" and echo["path"] == "/app/page?x=1"
    assert any(url.startswith(world.idp.issuer + "/interaction/") for url in browser.urls_since(0))
    assert len(browser.documents) <= MAX_DOCUMENTS_PER_SIGN_IN, browser.urls_since(0)
    # The browser holds the session cookie, HttpOnly: the page's scripts cannot read it...
    [session_cookie] = [cookie for cookie in cookies if cookie["name"] == cookie_name]
    assert session_cookie["httpOnly"] is True
    assert cookie_name not in script_cookies
    # ...and the app behind the proxy never receives it.
    sent_cookies = [value for name, value in echo["headers"] if name.lower() == "cookie"]
    assert not any(cookie_name in value for value in sent_cookies)


async def test_step_up_asks_only_for_the_code_and_lets_a_wrong_one_be_retried(world: LoginWorld,
                                                                              browser: BrowserTab) -> None:
    async def password_only(page: Page) -> None:
        await sign_in(page, world, "/app/", "bob", BOB_PASSWORD)  # /app needs no second factor

    await browser.run(password_only)
    step_up_start = len(browser.documents)

    async def step_up(page: Page) -> dict[str, Any]:
        await page.goto(world.url + "/payroll/")
        await page.wait_for_url(url_starts(world.idp.issuer + "/interaction/"))
        await expect(page.get_by_role("heading", name="Verification code")).to_be_visible()
        await expect(page.get_by_text("Signed in as bob")).to_be_visible()
        await expect(page.get_by_label("Password")).to_have_count(0)  # the IdP session vouches for it
        await enter_code(page, wrong_code(BOB_TOTP_SECRET, time.time()))
        await expect(page.get_by_role("alert")).to_have_text("Wrong code, try again.")
        await expect(page.get_by_role("heading", name="Verification code")).to_be_visible()
        await enter_code(page, pyotp.TOTP(BOB_TOTP_SECRET).now())
        await page.wait_for_url(url_is(world.url + "/payroll/"))
        return await shown_echo(page)

    echo = await browser.run(step_up)
    assert echo["path"] == "/payroll/"
    # One more document for the wrong code's answer; no bouncing.
    assert len(browser.documents) - step_up_start <= MAX_DOCUMENTS_PER_SIGN_IN, browser.urls_since(step_up_start)


async def test_a_user_not_on_the_list_sees_why_with_a_request_id(world: LoginWorld, browser: BrowserTab) -> None:
    async def denied(page: Page) -> tuple[str, int | None, str | None, str]:
        await page.goto(world.url + "/alice/")
        await enter_password(page, world, "bob", BOB_PASSWORD)
        await page.wait_for_url(url_is(world.url + "/alice/"))
        await expect(page.get_by_role("heading", name="Access denied")).to_be_visible()
        after_sign_in = await shown_text(page)
        # Coming back later: the same page at once, with its own request id.
        response = await page.goto(world.url + "/alice/")
        assert response is not None
        return after_sign_in, response.status, await response.header_value("x-request-id"), await shown_text(page)

    after_sign_in, status, header_id, again = await browser.run(denied)
    assert browser.documents[-2].url == world.url + "/alice/" and browser.documents[-2].status == 403
    for text in (after_sign_in, again):
        assert "Your account is not on the list of users of this application." in text
        assert REQUEST_ID.search(text), text
    assert status == 403
    shown_id = REQUEST_ID.search(again)
    assert shown_id is not None and shown_id.group(1) == header_id
    # Plain words only: nothing about the proxy's insides.
    assert world.upstream.url not in after_sign_in and "Traceback" not in after_sign_in
    assert len(browser.documents) <= MAX_DOCUMENTS_PER_SIGN_IN + 1, browser.urls_since(0)


async def test_a_user_without_the_group_or_a_second_factor_is_denied_without_a_loop(world: LoginWorld,
                                                                                      browser: BrowserTab) -> None:
    async def sign_in_denied(page: Page) -> str:
        # Every way into /payroll needs MFA, which alice cannot give: wherever the proxy says so
        # (its callback, or /payroll itself), it is a page that says why, not another trip.
        await page.goto(world.url + "/payroll/")
        await enter_password(page, world, "alice", ALICE_PASSWORD)
        await expect(page.get_by_role("heading", name="Access denied")).to_be_visible()
        return await shown_text(page)

    text = await browser.run(sign_in_denied)
    assert "second factor" in text and REQUEST_ID.search(text), text
    assert browser.documents[-1].status == 403, browser.urls_since(0)
    assert len(browser.documents) <= MAX_DOCUMENTS_PER_SIGN_IN, browser.urls_since(0)
    trips_to_idp = [url for url in browser.urls_since(0) if url.startswith(world.idp.issuer + "/auth?")]
    assert len(trips_to_idp) == 1, browser.urls_since(0)

    revisit_start = len(browser.documents)

    async def revisit(page: Page) -> str:
        # Signed in now: the route's answer is the deny page itself, at once, with the reasons.
        await page.goto(world.url + "/payroll/")
        await expect(page.get_by_role("heading", name="Access denied")).to_be_visible()
        return await shown_text(page)

    text = await browser.run(revisit)
    assert "Your account is not in a group this application requires." in text
    # A second factor would not change the answer, so the page does not ask for one.
    assert "second factor" not in text
    # What to do next is a link to the user's own access page.
    assert "See your sign-in, your device and the applications open to you" in text
    assert REQUEST_ID.search(text), text
    assert [(d.url, d.status) for d in browser.documents[revisit_start:]] == [(world.url + "/payroll/", 403)]


async def test_sign_out_ends_the_proxy_and_idp_sessions(world: LoginWorld, browser: BrowserTab) -> None:
    cookie_name = world.proxy.config.sessions.cookie_name

    async def sign_out(page: Page) -> list[Any]:
        await sign_in(page, world, "/app/", "alice", ALICE_PASSWORD)
        await page.goto(world.url + "/.ztproxy/logout")
        await expect(page.get_by_role("heading", name="Sign out?")).to_be_visible()
        # Only looking at the confirmation page signs nobody out.
        await page.goto(world.url + "/app/")
        await page.wait_for_url(url_is(world.url + "/app/"))
        await page.goto(world.url + "/.ztproxy/logout")
        async with page.expect_navigation():  # fails at once if the proxy drops the connection
            await page.get_by_role("button", name="Sign out").click()
        # The IdP's end-session page asks too; the proxy's session has already ended.
        await page.wait_for_url(url_starts(world.idp.issuer + "/session/end"))
        await expect(page.get_by_role("heading", name="Sign out")).to_be_visible()
        await page.get_by_role("button", name="Sign out").click()
        await page.wait_for_url(url_is(world.url + "/.ztproxy/signed-out"))
        await expect(page.get_by_role("heading", name="You are signed out")).to_be_visible()
        return await page.context.cookies()

    cookies = await browser.run(sign_out)
    assert cookie_name not in {cookie["name"] for cookie in cookies}
    # The way out: the proxy's sign-out post, through the IdP's end-session pages, back to the proxy.
    logout = world.url + "/.ztproxy/logout"
    posts = [i for i, d in enumerate(browser.documents) if d.method == "POST" and d.url == logout]
    assert len(posts) == 1, browser.urls_since(0)
    way_out = browser.urls_since(posts[0] + 1)
    assert way_out[0].startswith(world.idp.issuer + "/session/end?"), way_out
    assert way_out[-1] == world.url + "/.ztproxy/signed-out", way_out

    async def come_back(page: Page) -> None:
        # The IdP session ended too: the password is asked again, not silently skipped.
        await page.goto(world.url + "/app/")
        await at_idp_sign_in(page, world)

    await browser.run(come_back)

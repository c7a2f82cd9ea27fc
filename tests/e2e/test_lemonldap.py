"""ztproxy with a second real OpenID Provider, LemonLDAP::NG 2.16, in a real headless Chromium.

One LemonLDAP (``tests.support.lemonldap``: Debian's packages, its FastCGI server behind
nginx with TLS from a test CA) serves the module; each test runs ``ztproxy run`` as a
process on the port LemonLDAP knows as its relying party, trusting that CA through
``SSL_CERT_FILE`` (OpenSSL's own variable: ztproxy has no CA option of its own, and needs
none). The browser's context ignores certificate errors: what is under test is ztproxy's
trust in the IdP, which is strict.

Sign-in, the identity refreshed at the IdP with the (offline) refresh token, a group
change taking effect at the next refresh, step-up with ``max_age``, LemonLDAP's sign-out
ending the proxy's session through OIDC Front-Channel Logout in a cross-site iframe, and the
proxy's sign-out ending LemonLDAP's session (RP-Initiated Logout, with and without the hint).
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import ssl
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import pytest
from playwright.async_api import Page, expect

from tests.conftest import ProxyProcess, UpstreamFactory, free_port
from tests.e2e.conftest import BrowserTab
from tests.support.lemonldap import (
    ALICE,
    BOB,
    CLIENT_ID,
    CLIENT_SECRET,
    SCOPES,
    LemonLdap,
    User,
    remove,
    start_lemonldap,
)

pytestmark = pytest.mark.integration

REFRESH_INTERVAL = 1.0  # seconds: every request after the first re-verifies the user at LemonLDAP
MAX_AUTH_AGE = 4  # seconds, the /fresh route's: more than a sign-in takes on a busy machine


class Relying:
    """Where ztproxy listens: the one address registered at LemonLDAP for this module.

    On https, as LemonLDAP's pages only frame https pages (its CSP's ``child-src`` names the
    front-channel logout URI's host without a scheme, which an https page reads as https), and
    at ``localhost`` while LemonLDAP is at 127.0.0.1: another site, so the browser sends no
    SameSite=Lax cookie to ztproxy's front-channel logout page, as for an IdP of another domain.
    """

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"https://localhost:{self.port}"


@pytest.fixture(scope="module")
def relying() -> Relying:
    return Relying()


@pytest.fixture(scope="module")
def lemonldap(relying: Relying, request: pytest.FixtureRequest) -> Iterator[LemonLdap]:
    idp = start_lemonldap(relying.url)
    failed_before = request.session.testsfailed
    yield idp
    remove(idp, keep=request.session.testsfailed > failed_before)


@pytest.fixture
def browser_context_options() -> dict[str, Any]:
    return {"ignore_https_errors": True}  # LemonLDAP's certificate is from the test CA


def proxy_yaml(relying: Relying, idp: LemonLdap, upstream_url: str, *, client_secret: str = CLIENT_SECRET,
               id_token_hint: bool = False) -> str:
    assert idp.certificate is not None
    return f"""
server:
  listen: 127.0.0.1:{relying.port}
  public_url: {relying.url}
  admin_listen: 127.0.0.1:{free_port()}
  tls: {{cert_file: '{idp.certificate.cert_file}', key_file: '{idp.certificate.key_file}'}}
identity_providers:
  - name: lemonldap
    issuer: {idp.issuer}
    client_id: {CLIENT_ID}
    client_secret: {client_secret}
    token_endpoint_auth_method: client_secret_post
    scopes: [{", ".join(SCOPES)}]
    logout_id_token_hint: {str(id_token_hint).lower()}
sessions:
  cookie_secrets: [0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef]
  refresh_interval: {REFRESH_INTERVAL}s
routes:
  - name: app
    path: /app
    upstream: {upstream_url}
    allow: [{{email_domains: [corp.example]}}]
  - name: payroll
    path: /payroll
    upstream: {upstream_url}
    allow: [{{groups: [payroll]}}]
  - name: fresh
    path: /fresh
    upstream: {upstream_url}
    allow: [{{email_domains: [corp.example], max_auth_age: {MAX_AUTH_AGE}s}}]
"""


class World:
    def __init__(self, idp: LemonLdap, proxy: ProxyProcess) -> None:
        self.idp = idp
        self.proxy = proxy

    @property
    def url(self) -> str:
        return self.proxy.url

    def token_requests(self) -> int:
        """Token endpoint calls LemonLDAP served: the code exchange, then each refresh."""
        log = (self.idp.directory / "nginx-access.log").read_text(encoding="utf-8")
        return len(re.findall(r'"POST /oauth2/token ', log))

    async def events(self, name: str, *, at_least: int = 1) -> list[dict[str, Any]]:
        """The proxy's log events called ``name``, once ``at_least`` are there (its log is written a moment later)."""
        for _ in range(50):
            found = self._events(name)
            if len(found) >= at_least:
                break
            await asyncio.sleep(0.1)
        return found

    def _events(self, name: str) -> list[dict[str, Any]]:
        found = []
        for line in self.proxy.log_lines():
            if line.startswith("{"):
                event = json.loads(line)
                if event.get("event") == name:
                    found.append(event)
        return found


ProxyStarter = Callable[..., ProxyProcess]


@pytest.fixture
async def world(lemonldap: LemonLdap, relying: Relying, proxy_process: ProxyStarter,
                start_upstream: UpstreamFactory) -> World:
    upstream = await start_upstream()
    proxy = await asyncio.to_thread(proxy_process, proxy_yaml(relying, lemonldap, upstream.url),
                                    env={"SSL_CERT_FILE": str(lemonldap.ca_file)})
    return World(lemonldap, proxy)


# --- what a person does on the pages (these run in the browser's thread) ---------------------

def url_is(expected: str) -> Callable[[str], bool]:
    return lambda url: url == expected


def url_starts(prefix: str) -> Callable[[str], bool]:
    return lambda url: url.startswith(prefix)


async def enter_password(page: Page, idp: LemonLdap, user: User) -> None:
    await page.wait_for_url(url_starts(idp.issuer + "/"))
    await page.locator("input[name=user]").fill(user.uid)
    await page.locator("input[name=password]").fill(user.password)
    await page.locator("form button[type=submit]").first.click()


async def sign_in(page: Page, world: World, path: str, user: User) -> dict[str, Any]:
    """Open ``path`` signed out, sign in at LemonLDAP, be back on ``path``: the app's echo."""
    await page.goto(world.url + path)
    await enter_password(page, world.idp, user)
    await page.wait_for_url(url_is(world.url + path))
    return await shown_echo(page)


async def shown_echo(page: Page) -> dict[str, Any]:
    data = json.loads(await page.locator("pre").first.inner_text())
    assert isinstance(data, dict)
    return data


def header(echo: dict[str, Any], name: str) -> str:
    return next(value for key, value in echo["headers"] if key.lower() == name.lower())


def assertion_claims(echo: dict[str, Any]) -> dict[str, Any]:
    # Only read here: test_identity_forwarding checks the assertion's signature.
    payload = header(echo, "X-Ztproxy-Jwt-Assertion").split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert isinstance(claims, dict)
    return claims


# --- the journeys ------------------------------------------------------------------------------

async def test_sign_in_at_lemonldap_gives_the_app_the_identity(world: World, browser: BrowserTab) -> None:
    async def journey(page: Page) -> dict[str, Any]:
        return await sign_in(page, world, "/app/page?x=1", BOB)

    echo = await browser.run(journey)
    assert echo["path"] == "/app/page?x=1"
    assert header(echo, "X-Ztproxy-User") == "bob"
    assert header(echo, "X-Ztproxy-Email") == BOB.mail
    claims = assertion_claims(echo)
    assert claims["sub"] == "bob" and claims["email"] == BOB.mail and claims["name"] == BOB.name
    assert sorted(claims["groups"]) == ["employees", "payroll"]
    assert any(url.startswith(world.idp.issuer + "/oauth2/authorize?") for url in browser.urls_since(0))


async def test_the_identity_is_refreshed_at_lemonldap_with_the_refresh_token(world: World,
                                                                             browser: BrowserTab) -> None:
    async def first(page: Page) -> dict[str, Any]:
        return await sign_in(page, world, "/app/", ALICE)

    async def again(page: Page) -> dict[str, Any]:
        await page.goto(world.url + "/app/again")
        return await shown_echo(page)

    signed_in_at = assertion_claims(await browser.run(first))["auth_time"]
    for _ in range(2):  # and again with what the first refresh answered
        token_requests = world.token_requests()
        await asyncio.sleep(REFRESH_INTERVAL + 0.2)
        start = len(browser.documents)
        echo = await browser.run(again)
        # No trip to LemonLDAP in the browser: the proxy redeemed the refresh token itself.
        assert browser.urls_since(start) == [world.url + "/app/again"]
        assert world.token_requests() > token_requests
        assert header(echo, "X-Ztproxy-User") == "alice"
        assert assertion_claims(echo)["auth_time"] == signed_in_at  # verified again, not signed in again
    assert not await world.events("session_ended", at_least=0)


async def test_a_group_removed_at_lemonldap_is_denied_after_the_next_refresh(world: World,
                                                                              browser: BrowserTab) -> None:
    async def payroll(page: Page) -> dict[str, Any]:
        return await sign_in(page, world, "/payroll/", BOB)

    echo = await browser.run(payroll)
    assert "payroll" in assertion_claims(echo)["groups"]
    world.idp.set_groups(BOB.uid, ["employees"])
    try:
        await asyncio.sleep(REFRESH_INTERVAL + 0.2)

        async def denied(page: Page) -> tuple[int | None, str]:
            response = await page.goto(world.url + "/payroll/")
            await expect(page.get_by_role("heading", name="Access denied")).to_be_visible()
            return (response.status if response else None), await page.locator("body").inner_text()

        status, text = await browser.run(denied)
    finally:
        world.idp.set_groups(BOB.uid, BOB.groups)
    assert status == 403
    assert "Your account is not in a group this application requires." in text
    [changed] = await world.events("session_groups_changed")
    assert changed["subject"] == "bob"


async def test_step_up_with_max_age_signs_in_again_at_lemonldap(world: World, browser: BrowserTab) -> None:
    async def first(page: Page) -> dict[str, Any]:
        return await sign_in(page, world, "/fresh/", ALICE)

    first_sign_in = assertion_claims(await browser.run(first))["auth_time"]
    await asyncio.sleep(MAX_AUTH_AGE + 1.1)
    step_up_start = len(browser.documents)

    async def step_up(page: Page) -> dict[str, Any]:
        await page.goto(world.url + "/fresh/")
        # LemonLDAP says why and asks before it ends its own session to sign in anew.
        await expect(page.get_by_text("This application needs a more recent authentication.")).to_be_visible()
        await page.get_by_role("button", name="Renew session").click()
        await enter_password(page, world.idp, ALICE)
        await page.wait_for_url(url_is(world.url + "/fresh/"))
        return await shown_echo(page)

    echo = await browser.run(step_up)
    authorize = [url for url in browser.urls_since(step_up_start)
                 if url.startswith(world.idp.issuer + "/oauth2/authorize?")]
    assert authorize and f"max_age={MAX_AUTH_AGE}" in authorize[0] and "prompt=login" in authorize[0], authorize
    assert assertion_claims(echo)["auth_time"] >= first_sign_in + MAX_AUTH_AGE


async def test_signing_out_at_lemonldap_ends_the_proxy_session_through_its_iframe(world: World,
                                                                                  browser: BrowserTab) -> None:
    cookie_name = "ztproxy_session"
    frontchannel = world.url + "/.ztproxy/frontchannel-logout?"

    async def journey(page: Page) -> tuple[list[str], list[Any]]:
        await sign_in(page, world, "/app/", ALICE)
        async with page.expect_response(lambda r: r.url.startswith(frontchannel)) as framed:
            await page.goto(world.idp.logout_url)
        response = await framed.value
        assert response.status == 200
        sent = await response.request.all_headers()
        assert "cookie" not in sent, sent  # SameSite=Lax: a cross-site iframe carries none
        return [frame.url for frame in page.frames], await page.context.cookies()

    frames, cookies = await browser.run(journey)
    assert any(url.startswith(frontchannel) for url in frames), frames
    # The browser still holds its cookie; the proxy ended the session behind it.
    assert cookie_name in {cookie["name"] for cookie in cookies}
    [logout] = await world.events("frontchannel_logout")
    assert logout["sessions_ended"] == 1

    async def come_back(page: Page) -> None:
        await page.goto(world.url + "/app/")
        await page.wait_for_url(url_starts(world.idp.issuer + "/"))
        await expect(page.locator("input[name=password]")).to_be_visible()

    await browser.run(come_back)


@pytest.mark.parametrize("hint", [False, True], ids=["client_id", "id_token_hint"])
async def test_signing_out_through_the_proxy_ends_the_lemonldap_session(
        lemonldap: LemonLdap, relying: Relying, proxy_process: ProxyStarter, start_upstream: UpstreamFactory,
        browser: BrowserTab, hint: bool) -> None:
    # RP-Initiated Logout 1.0: LemonLDAP checks post_logout_redirect_uri against its relying
    # parties and asks the user to confirm; with the ID token as id_token_hint, it skips the
    # question for a relying party set to "bypass confirm" (this one is).
    upstream = await start_upstream()
    proxy = await asyncio.to_thread(proxy_process, proxy_yaml(relying, lemonldap, upstream.url, id_token_hint=hint),
                                    env={"SSL_CERT_FILE": str(lemonldap.ca_file)})
    world = World(lemonldap, proxy)

    async def journey(page: Page) -> list[Any]:
        await sign_in(page, world, "/app/", ALICE)
        await page.goto(world.url + "/.ztproxy/logout")
        async with page.expect_navigation():
            await page.get_by_role("button", name="Sign out").click()
        if not hint:
            await page.wait_for_url(url_starts(world.idp.issuer + "/"))
            await expect(page.get_by_text("Do you want to logout?")).to_be_visible()
            await page.locator("button.positive").click()
        # LemonLDAP signs its other relying parties out in iframes (the proxy's front-channel page,
        # the session already gone), then offers the way back: Continue, or 20 seconds.
        await expect(page.get_by_text("redirected in")).to_be_visible()
        await page.get_by_role("button", name="Continue").click()
        await page.wait_for_url(url_starts(world.url + "/.ztproxy/signed-out"))  # LemonLDAP adds an empty "?"
        await expect(page.get_by_role("heading", name="You are signed out")).to_be_visible()
        return await page.context.cookies()

    cookies = await browser.run(journey)
    assert "ztproxy_session" not in {cookie["name"] for cookie in cookies}
    ended = [url for url in browser.urls_since(0) if url.startswith(world.idp.issuer + "/oauth2/logout?")]
    assert ended and ("id_token_hint=" in ended[0]) == hint and f"client_id={CLIENT_ID}" in ended[0], ended

    async def come_back(page: Page) -> None:
        # The LemonLDAP session ended too: the password is asked again.
        await page.goto(world.url + "/app/")
        await page.wait_for_url(url_starts(world.idp.issuer + "/"))
        await expect(page.locator("input[name=password]")).to_be_visible()

    await browser.run(come_back)


# --- what goes wrong, cheaply ------------------------------------------------------------------

async def test_a_wrong_client_secret_gives_the_misconfigured_page(lemonldap: LemonLdap, relying: Relying,
                                                                  proxy_process: ProxyStarter,
                                                                  start_upstream: UpstreamFactory,
                                                                  browser: BrowserTab) -> None:
    upstream = await start_upstream()
    yaml_text = proxy_yaml(relying, lemonldap, upstream.url, client_secret="not-" + CLIENT_SECRET)
    proxy = await asyncio.to_thread(proxy_process, yaml_text, env={"SSL_CERT_FILE": str(lemonldap.ca_file)})
    world = World(lemonldap, proxy)

    async def journey(page: Page) -> str:
        await page.goto(world.url + "/app/")
        await enter_password(page, lemonldap, ALICE)
        await expect(page.get_by_role("heading", name="Sign-in is misconfigured")).to_be_visible()
        return await page.locator("body").inner_text()

    text = await browser.run(journey)
    assert "administrator" in text
    assert browser.documents[-1].status == 503
    assert await world.events("invalid_client")


async def test_without_the_ca_the_proxy_does_not_trust_lemonldap(lemonldap: LemonLdap, relying: Relying,
                                                                 proxy_process: ProxyStarter,
                                                                 start_upstream: UpstreamFactory) -> None:
    upstream = await start_upstream()
    # No SSL_CERT_FILE: the system's CAs, which never signed LemonLDAP's certificate.
    proxy = await asyncio.to_thread(proxy_process, proxy_yaml(relying, lemonldap, upstream.url), wait=False)
    tls = ssl.create_default_context(cafile=str(lemonldap.ca_file))
    async with aiohttp.ClientSession() as client:
        for _ in range(100):  # until it listens
            try:
                async with client.get(proxy.url + "/app/", headers={"Accept": "text/html"}, allow_redirects=False,
                                      ssl=tls) as response:
                    status, text = response.status, await response.text()
                break
            except aiohttp.ClientConnectorError:
                await asyncio.sleep(0.1)
        else:
            pytest.fail("ztproxy did not listen")
    assert status == 503, text[:300]
    assert "Sign-in unavailable" in text
    unreachable = await World(lemonldap, proxy).events("idp_unreachable")
    assert "SSLCertVerificationError" in unreachable[0]["error"], unreachable

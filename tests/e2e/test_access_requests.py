"""Just-in-time access as two people see it, in a real headless Chromium: ask, approve, use, end.

Two ``ztproxy run`` replicas (one with two workers) on one Redis and the demo IdP
(``tests.integration.test_grants``). Bob, refused payroll, follows "Request access" and asks
on replica A; Carol, an approver, signs in on replica B, steps up with her TOTP code when the
page asks for it, and approves; Bob's next visit opens payroll. Carol ends the grant and Bob
is refused again. Every check is on what the browsers show; the forms are posted by the
browser itself (its own Origin header, the page's CSRF token).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pyotp
import pytest
from playwright.async_api import Page, expect

from tests.e2e.conftest import BrowserTab, Chromium
from tests.integration.test_grants import BOUND, Replica, World, WorldFactory, start_replicas
from tests.support.idp import BOB_PASSWORD, CAROL_PASSWORD, CAROL_TOTP_SECRET

pytestmark = pytest.mark.integration
__all__ = ["start_replicas"]  # the fixture, used by name


def url_is(expected: str) -> Callable[[str], bool]:
    return lambda url: url == expected


def url_starts(prefix: str) -> Callable[[str], bool]:
    return lambda url: url.startswith(prefix)


async def enter_password(page: Page, world: World, username: str, password: str) -> None:
    await page.wait_for_url(url_starts(world.idp.issuer + "/interaction/"))
    await page.get_by_label("Username").fill(username)
    await page.get_by_label("Password").fill(password)
    await page.get_by_role("button", name="Sign in").click()


async def payroll_status(tab: BrowserTab, replica: Replica) -> int:
    async def visit(page: Page) -> int:
        response = await page.goto(replica.url + "/payroll/report")
        assert response is not None
        return response.status

    return await tab.run(visit)


async def until_status(tab: BrowserTab, replica: Replica, expected: int, since: float) -> None:
    while (status := await payroll_status(tab, replica)) != expected:
        assert time.monotonic() - since < BOUND, f"{replica.name} still answers {status}"
        await asyncio.sleep(0.1)


async def test_request_approve_use_and_end_in_the_browser(start_replicas: WorldFactory, browser: BrowserTab,
                                                           chromium: Chromium) -> None:
    world = await start_replicas()
    bob = browser
    carol = await chromium.open_tab()
    try:
        async def ask(page: Page) -> str:
            await page.goto(world.a.url + "/payroll/report")
            await enter_password(page, world, "bob", BOB_PASSWORD)
            await page.wait_for_url(url_is(world.a.url + "/payroll/report"))
            await expect(page.get_by_role("heading", name="Access denied")).to_be_visible()
            await expect(page.get_by_text("approved access request")).to_be_visible()
            await page.get_by_role("link", name="Request access").click()
            await page.wait_for_url(url_is(world.a.url + "/.ztproxy/access/?route=payroll"))
            await page.get_by_label("Reason (required)").fill("month-end close")
            await page.get_by_label("Duration").fill("10m")
            await page.get_by_role("button", name="Request access").click()
            await page.wait_for_url(url_is(world.a.url + "/.ztproxy/access/"))
            return await page.locator("#my-requests").inner_text()

        mine = await bob.run(ask)
        assert "payroll" in mine and "waiting for approval (0 of 1)" in mine

        async def approve(page: Page) -> str:
            await page.goto(world.b.url + "/.ztproxy/access/")
            await enter_password(page, world, "carol", CAROL_PASSWORD)
            await page.wait_for_url(url_is(world.b.url + "/.ztproxy/access/"))
            await page.get_by_role("link", name="Sign in with a second factor").click()
            await page.wait_for_url(url_starts(world.idp.issuer + "/interaction/"))
            await page.get_by_label("Code").fill(pyotp.TOTP(CAROL_TOTP_SECRET).now())
            await page.get_by_role("button", name="Verify").click()
            await page.wait_for_url(url_is(world.b.url + "/.ztproxy/access/"))
            waiting = await page.locator("main").inner_text()
            await page.get_by_label("Comment (optional)").fill("ok for the close")
            await page.get_by_role("button", name="Approve").click()
            await page.wait_for_url(url_is(world.b.url + "/.ztproxy/access/"))
            await expect(page.get_by_role("button", name="End this access now")).to_be_visible()
            return waiting

        waiting = await carol.run(approve)
        approved_at = time.monotonic()
        assert "bob@corp.example" in waiting and "month-end close" in waiting and "10m" in waiting
        for replica in world.replicas:
            await until_status(bob, replica, 200, approved_at)

        async def me(page: Page) -> str:
            await page.goto(world.b.url + "/.ztproxy/me")
            return await page.locator("main").inner_text()

        assert "Access granted to you for a while" in await bob.run(me)

        async def end(page: Page) -> None:
            await page.get_by_role("button", name="End this access now").click()
            await page.wait_for_url(url_is(world.b.url + "/.ztproxy/access/"))
            await expect(page.get_by_role("button", name="End this access now")).to_have_count(0)

        await carol.run(end)
        ended_at = time.monotonic()
        for replica in world.replicas:
            await until_status(bob, replica, 403, ended_at)
    finally:
        await carol.close(None)

"""Browser fixtures for end-to-end tests: Debian's Chromium (/usr/bin/chromium) driven by Playwright.

No browser is ever downloaded: Playwright launches the system's Chromium, headless.

Playwright's asyncio objects belong to the event loop that started them, and pytest-asyncio gives
every test a loop of its own, in which the proxy under test runs. So one Chromium serves the whole
session from a thread with its own loop, and a test hands it *journeys*: coroutine functions taking
a ``Page``, run there while the test's loop goes on serving the proxy::

    async def sign_in(page: Page) -> str:
        await page.goto(world.url + "/app/")
        ...
        return page.url

    final_url = await browser.run(sign_in)

- ``chromium``: the session's browser (launched at first use, closed at the end of the session);
- ``browser``: a ``BrowserTab`` for this test, in a fresh context (no cookies, no storage), which
  records every document the tab loaded (redirect hops included) and, when the test fails, leaves
  a screenshot and that list in the test's tmp dir; a module overrides ``browser_context_options``
  to give that context options (Playwright's ``new_context`` keywords).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from playwright.async_api import Browser, BrowserContext, Page, Playwright, async_playwright
from playwright.async_api import Error as PlaywrightError
from playwright.async_api import Response as PageResponse

CHROMIUM = Path("/usr/bin/chromium")
# Running as root needs --no-sandbox. The rest keep Chromium off the network except for the
# pages a test opens: without them it calls Google services, which a closed network refuses.
CHROMIUM_ARGS = ("--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync")
ACTION_TIMEOUT_MS = 10_000  # one click, fill or wait for a URL; a journey takes seconds
JOURNEY_TIMEOUT = 60.0  # seconds; under pytest's own timeout, so a hung browser fails with a message
LAUNCH_TIMEOUT = 60.0

T = TypeVar("T")
Journey = Callable[[Page], Coroutine[Any, Any, T]]  # an async def taking the page


@dataclass(frozen=True)
class Document:
    """One document response of the tab's main frame: a page, or a redirect hop towards one."""

    method: str
    url: str
    status: int


class Chromium:
    """One headless Chromium, driven from a thread and event loop of its own."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="chromium", daemon=True)
        self._playwright: Playwright | None = None
        self._browser: Browser | None = None

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._launch(), self._loop).result(LAUNCH_TIMEOUT)

    async def _launch(self) -> None:
        self._playwright = await async_playwright().start()
        self._browser = await self._playwright.chromium.launch(
            executable_path=CHROMIUM, args=list(CHROMIUM_ARGS), headless=True, timeout=LAUNCH_TIMEOUT * 1000)

    def stop(self) -> None:
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(LAUNCH_TIMEOUT)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(LAUNCH_TIMEOUT)
        self._loop.close()

    async def _close(self) -> None:
        if self._browser is not None:
            await self._browser.close()
        if self._playwright is not None:
            await self._playwright.stop()

    async def call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on the browser's loop; this (the caller's) loop stays free meanwhile."""
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), JOURNEY_TIMEOUT)
        finally:
            future.cancel()  # a timed-out journey stops where it is, not in the next test

    async def open_tab(self, **context_options: Any) -> BrowserTab:
        return await self.call(self._open_tab(context_options))

    async def _open_tab(self, context_options: dict[str, Any]) -> BrowserTab:
        assert self._browser is not None, "Chromium is not started"
        context = await self._browser.new_context(**context_options)
        context.set_default_timeout(ACTION_TIMEOUT_MS)
        page = await context.new_page()
        tab = BrowserTab(chromium=self, context=context, page=page)
        page.on("response", tab._record)
        return tab


@dataclass
class BrowserTab:
    """A page in a fresh browser context, and the documents it loaded."""

    chromium: Chromium
    context: BrowserContext
    page: Page
    documents: list[Document] = field(default_factory=list)

    async def run(self, journey: Journey[T]) -> T:
        """Run ``journey(page)`` in the browser's thread; its result or its exception comes back here."""
        return await self.chromium.call(journey(self.page))

    def urls_since(self, start: int) -> list[str]:
        return [document.url for document in self.documents[start:]]

    def _record(self, response: PageResponse) -> None:
        request = response.request
        if request.is_navigation_request() and request.frame == self.page.main_frame:
            self.documents.append(Document(request.method, response.url, response.status))

    async def close(self, failure_dir: Path | None) -> None:
        await self.chromium.call(self._close(failure_dir))

    async def _close(self, failure_dir: Path | None) -> None:
        if failure_dir is not None:
            lines = [f"{d.status} {d.method} {d.url}" for d in self.documents]
            (failure_dir / "browser-documents.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
            try:
                await self.page.screenshot(path=failure_dir / "browser-failure.png", full_page=True)
            except PlaywrightError as exc:  # a crashed page has no screenshot; the list above is still there
                print(f"no screenshot: {exc}")
            print(f"browser state at failure: {failure_dir}")
        await self.context.close()


_CALL_FAILED = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item,
                               call: pytest.CallInfo[None]) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    # Remembered for the ``browser`` fixture's teardown, which decides whether to keep a screenshot.
    report = yield
    if report.when == "call":
        item.stash[_CALL_FAILED] = report.failed
    return report


@pytest.fixture(scope="session")
def chromium() -> Iterator[Chromium]:
    if not CHROMIUM.exists():
        pytest.fail(f"browser tests need Debian's Chromium at {CHROMIUM} (apt-get install chromium)")
    browser = Chromium()
    try:
        browser.start()
        yield browser
    finally:
        browser.stop()


@pytest.fixture
def browser_context_options() -> dict[str, Any]:
    """Playwright's ``new_context`` options for the ``browser`` fixture's tab; a test module may override it."""
    return {}


@pytest.fixture
async def browser(chromium: Chromium, request: pytest.FixtureRequest, tmp_path: Path,
                  browser_context_options: dict[str, Any]) -> AsyncIterator[BrowserTab]:
    tab = await chromium.open_tab(**browser_context_options)
    yield tab
    failed = request.node.stash.get(_CALL_FAILED, False)
    await tab.close(tmp_path if failed else None)

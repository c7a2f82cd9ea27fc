"""Cross-site WebSocket hijacking, as a real browser would attempt it.

Headless Chromium opens a WebSocket to the proxy twice: from a page the proxy serves (its
own origin: the socket opens and echoes) and from a page of another origin on the same host
(another port: the same site, so a SameSite=Lax cookie would go along): the proxy refuses
the upgrade and the page's socket closes without ever opening.
"""

from __future__ import annotations

import pytest
from aiohttp import web
from playwright.async_api import Page

from tests.conftest import ProxyFactory, UpstreamFactory, proxy_yaml
from tests.e2e.conftest import BrowserTab
from tests.integration.test_websocket_origins import ws_echo

pytestmark = pytest.mark.integration

PAGE = "<!doctype html><html><head><title>ws</title></head><body>page</body></html>"
# Opens a socket to ``url``, sends "hi", and tells what happened first.
OPEN_SOCKET = """(url) => new Promise((resolve) => {
  const socket = new WebSocket(url);
  socket.onopen = () => socket.send("hi");
  socket.onmessage = (event) => { resolve("message:" + event.data); socket.close(); };
  socket.onclose = (event) => resolve("closed:" + event.code);
})"""


async def page(request: web.Request) -> web.Response:
    return web.Response(text=PAGE, content_type="text/html")


async def test_a_page_of_another_origin_cannot_open_a_socket(start_upstream: UpstreamFactory,
                                                           start_proxy: ProxyFactory, browser: BrowserTab) -> None:
    upstream = await start_upstream(routes=[web.get("/ws", ws_echo), web.get("/page", page)])
    proxy = await start_proxy(proxy_yaml(upstream.url))
    foreign = await start_upstream(page)  # another port on the same host: another origin, the same site
    socket_url = proxy.url.replace("http://", "ws://") + "/ws"

    async def from_page(url: str) -> str:
        async def journey(tab: Page) -> str:
            await tab.goto(url)
            result: str = await tab.evaluate(OPEN_SOCKET, socket_url)
            return result
        return await browser.run(journey)

    assert await from_page(proxy.url + "/page") == "message:echo:hi"
    refused = await from_page(foreign.url + "/")
    assert refused.startswith("closed:") and refused != "closed:1000", refused
    assert [r.path for r in upstream.requests].count("/ws") == 1  # the refused upgrade never reached the app

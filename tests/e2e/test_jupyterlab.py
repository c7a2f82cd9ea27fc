"""JupyterLab 4 behind ztproxy, in a real headless Chromium: a real app's CSRF, Host and Origin checks.

The world is the demo OpenID Provider, ztproxy, and ``jupyter lab`` (``tests.support.jupyter``) on
127.0.0.1 behind it at ``/jupyter/``, set up as a deployment would set it up: Jupyter's own
sign-in off (the proxy signs people in), its XSRF check and its Host and Origin checks on.
People use a host name, ``jupyter.localhost`` (Chromium resolves any ``*.localhost`` to
loopback itself), which Jupyter is told is its own (``local_hostnames``): it refuses other
names (DNS rebinding). The route keeps ztproxy's default ``preserve_host: true``: Jupyter
compares the browser's ``Origin`` with the ``Host`` it receives, and refuses kernel WebSockets
and API writes when they differ.

A person signs in through the proxy, opens a notebook from JupyterLab's launcher, runs a cell
(the kernel's answer comes back over the kernel's WebSocket, through the proxy), uploads a
file of a few MiB with the file browser's upload button (JupyterLab sends it in chunks, each a
PUT carrying Jupyter's XSRF header) and downloads it back intact. Without a session, the proxy
sends the browser to sign in and refuses API calls before they reach Jupyter.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import random
import re
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
from playwright.async_api import Page, expect
from playwright.async_api import Request as PageRequest

from tests.conftest import ProxyFactory, UpstreamFactory
from tests.e2e.conftest import BrowserTab
from tests.e2e.test_browser_login import enter_password, url_starts
from tests.integration.login_env import LoginWorld, start_world
from tests.support.idp import ALICE_PASSWORD, IdpFactory
from tests.support.jupyter import JupyterFactory, JupyterLab

pytestmark = pytest.mark.integration

BASE = "/jupyter/"
PUBLIC_HOST = "jupyter.localhost"
# JupyterLab's first load (a few MiB of scripts, a kernel to start) takes seconds on a busy
# two-core machine: each step gets far more than it needs; a journey stays under JOURNEY_TIMEOUT.
STEP_TIMEOUT_MS = 40_000
CELL = "print(6 * 7)"  # the page shows 42 only if the kernel ran it
UPLOAD_BYTES = 3 * 1024 * 1024 + 12_345  # more than JupyterLab's 1 MiB chunk: several PUTs, a last short one
UPLOAD_NAME = "upload.bin"

ROUTES = """
routes:
  - name: jupyter
    path: /jupyter
    upstream: {jupyter}
    allow: [{{{{email_domains: [corp.example]}}}}]
"""

# Runs in the page: the file as the browser downloads it from Jupyter, hashed there.
DOWNLOAD_SHA256 = """async (url) => {
  const response = await fetch(url, {credentials: "same-origin"});
  const body = await response.arrayBuffer();
  const digest = await crypto.subtle.digest("SHA-256", body);
  const hex = Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
  return {status: response.status, length: body.byteLength, sha256: hex};
}"""


@pytest.fixture
def jupyter(start_jupyter: JupyterFactory) -> JupyterLab:
    return start_jupyter(base_url=BASE, local_hostnames=[PUBLIC_HOST])


@pytest.fixture
async def world(start_idp: IdpFactory, start_proxy: ProxyFactory, start_upstream: UpstreamFactory,
                jupyter: JupyterLab) -> LoginWorld:
    # start_world formats ``routes`` with its echo upstream, unused here; Jupyter's URL goes in first.
    routes = ROUTES.format(jupyter=f"http://127.0.0.1:{jupyter.port}")
    return await start_world(start_idp, start_proxy, start_upstream, routes=routes, public_host=PUBLIC_HOST)


def public_url(world: LoginWorld) -> str:
    """Where people reach the proxy: http://jupyter.localhost:PORT (it listens on 127.0.0.1)."""
    return world.proxy.config.public_url


async def open_jupyterlab(page: Page, world: LoginWorld) -> None:
    """Signed out, open JupyterLab through the proxy, sign in, and see its launcher."""
    await page.goto(public_url(world) + BASE + "lab")
    await enter_password(page, world, "alice", ALICE_PASSWORD)
    await page.wait_for_url(url_starts(public_url(world) + BASE + "lab"))
    await expect(page.locator(".jp-Launcher")).to_be_visible(timeout=STEP_TIMEOUT_MS)


async def test_a_notebook_cell_runs_on_the_kernel_through_the_proxy(world: LoginWorld, jupyter: JupyterLab,
                                                                   browser: BrowserTab) -> None:
    sockets: list[str] = []

    async def sign_in(page: Page) -> None:
        page.on("websocket", lambda socket: sockets.append(socket.url))
        await open_jupyterlab(page, world)

    async def run_cell(page: Page) -> str:
        await page.locator(".jp-LauncherCard[data-category='Notebook']").first.click()
        # The kernel has started and answered over its WebSocket: JupyterLab's status bar says so.
        await expect(page.get_by_text("Python 3 (ipykernel) | Idle")).to_be_visible(timeout=STEP_TIMEOUT_MS)
        cell = page.locator(".jp-Notebook .jp-Cell").first
        editor = cell.locator(".cm-editor")
        await editor.locator(".cm-content").click()
        await expect(editor).to_have_class(re.compile(r"\bcm-focused\b"))
        await page.keyboard.type(CELL)
        await expect(editor.locator(".cm-content")).to_have_text(CELL)
        await page.keyboard.press("Shift+Enter")
        output = cell.locator(".jp-OutputArea-output")
        await expect(output).to_have_text("42", timeout=STEP_TIMEOUT_MS)
        return await output.inner_text()

    await browser.run(sign_in)
    assert (await browser.run(run_cell)).strip() == "42"
    # The kernel's messages went over a WebSocket the browser opened to the proxy, not to Jupyter.
    kernel_sockets = [url for url in sockets if "/api/kernels/" in url and "/channels" in url]
    assert kernel_sockets, sockets
    proxy_ws = public_url(world).replace("http://", "ws://") + BASE
    assert all(url.startswith(proxy_ws) for url in kernel_sockets), kernel_sockets


async def test_a_file_uploaded_through_the_proxy_downloads_back_intact(world: LoginWorld, jupyter: JupyterLab,
                                                                      browser: BrowserTab) -> None:
    data = random.Random(42).randbytes(UPLOAD_BYTES)
    uploaded = jupyter.root_dir / UPLOAD_NAME
    chunks_sent: list[str] = []
    chunk_answers: list[int] = []

    def is_chunk(request: PageRequest) -> bool:
        path = urllib.parse.urlsplit(request.url).path
        return request.method == "PUT" and path == BASE + "api/contents/" + UPLOAD_NAME

    async def sign_in(page: Page) -> None:
        await open_jupyterlab(page, world)

    async def upload(page: Page) -> None:
        page.on("request", lambda request: chunks_sent.append(request.url) if is_chunk(request) else None)
        page.on("response", lambda response: chunk_answers.append(response.status)
                if is_chunk(response.request) else None)
        async with page.expect_file_chooser() as chooser:
            await page.locator(".jp-FileBrowser").get_by_title("Upload Files").click()
        await (await chooser.value).set_files(
            {"name": UPLOAD_NAME, "mimeType": "application/octet-stream", "buffer": data})
        listing = page.locator(".jp-FileBrowser .jp-DirListing-item", has_text=UPLOAD_NAME)
        await expect(listing).to_be_visible(timeout=STEP_TIMEOUT_MS)
        # The listing shows the file from its first chunk on; Jupyter appends each next one.
        await until(lambda: uploaded.exists() and uploaded.stat().st_size >= UPLOAD_BYTES
                    and len(chunk_answers) == len(chunks_sent), "the last chunk's answer")

    await browser.run(sign_in)
    await browser.run(upload)
    assert uploaded.read_bytes() == data
    # Several PUTs through the proxy, each with Jupyter's XSRF header (Jupyter refuses one without).
    assert len(chunk_answers) > 1 and all(status in (200, 201) for status in chunk_answers), chunk_answers

    async def download(page: Page) -> dict[str, object]:
        url = public_url(world) + BASE + "files/" + urllib.parse.quote(UPLOAD_NAME) + "?download=1"
        result: dict[str, object] = await page.evaluate(DOWNLOAD_SHA256, url)
        return result

    downloaded = await browser.run(download)
    assert downloaded == {"status": 200, "length": UPLOAD_BYTES, "sha256": hashlib.sha256(data).hexdigest()}


async def test_without_a_session_jupyter_is_out_of_reach(world: LoginWorld, jupyter: JupyterLab,
                                                         client: aiohttp.ClientSession) -> None:
    # Jupyter listens on loopback only, on the free port the fixture chose.
    assert listening_addresses(jupyter.port) == {"127.0.0.1"}
    # A browser without a session is sent to sign in...
    async with client.get(world.url + BASE + "lab", allow_redirects=False,
                          headers={"Accept": "text/html"}) as response:
        assert response.status in (302, 303), response.status
        assert response.headers["Location"].startswith(world.idp.issuer + "/auth?")
    # ...and an API call, even one carrying Jupyter's own XSRF pair, is refused before Jupyter.
    async with client.post(world.url + BASE + "api/kernels", json={"name": "python3"},
                           headers={"Accept": "application/json", "Origin": world.url, "X-XSRFToken": "x",
                                    "Cookie": "_xsrf=x"}) as response:
        assert response.status == 401, response.status
    # ...and so is a kernel WebSocket, even from the route's own origin.
    socket_url = world.url.replace("http://", "ws://") + BASE + "api/kernels/any/channels"
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await client.ws_connect(socket_url, headers={"Origin": world.url})
    assert refused.value.status == 401, refused.value.status
    async with client.get(jupyter.url + "api/kernels") as response:
        assert await response.json() == []  # no kernel was started

    # Jupyter's own checks are on, so the proxy is what lets the pages above work: a write
    # without Jupyter's XSRF header, one whose Origin is not the Host Jupyter receives (what
    # preserve_host: false would send), and one for a host name Jupyter was not told about
    # are refused by Jupyter itself.
    public = public_url(world)
    host = urllib.parse.urlsplit(public).netloc
    start_kernel = {"url": jupyter.url + "api/kernels", "json": {"name": "python3"}}
    xsrf = {"X-XSRFToken": "x", "Cookie": "_xsrf=x"}
    async with client.post(**start_kernel, headers={"Host": host, "Origin": public}) as response:
        assert response.status == 403, response.status
    async with client.post(**start_kernel, headers={"Origin": public, **xsrf}) as response:
        assert response.status == 404, response.status  # Jupyter's answer to a cross-origin API call
    other = f"other.localhost:{world.proxy.port}"
    async with client.post(**start_kernel, headers={"Host": other, "Origin": f"http://{other}", **xsrf}) as response:
        assert response.status == 403, response.status
    async with client.get(jupyter.url + "api/kernels") as response:
        assert await response.json() == []


async def until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + STEP_TIMEOUT_MS / 1000
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


def listening_addresses(port: int) -> set[str]:
    """The local addresses of the sockets listening on ``port`` (Linux's /proc/net/tcp and tcp6)."""
    addresses = set()
    for table in (Path("/proc/net/tcp"), Path("/proc/net/tcp6")):
        for line in table.read_text(encoding="ascii").splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                addresses.add(_ip_from_proc(address))
    return addresses


def _ip_from_proc(address: str) -> str:
    raw = bytes.fromhex(address)
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(raw[::-1]))
    # IPv6: four 32-bit words, each in host (little-endian) order.
    return str(ipaddress.IPv6Address(b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))))

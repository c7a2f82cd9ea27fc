"""Shared fixtures: real servers on free loopback ports, started and stopped by the tests.

- ``upstream``: a real aiohttp app server (the app under test is given by the test);
- ``proxy``: ztproxy's real app and connection handling, in this event loop;
- ``proxy_process``: ``ztproxy run`` as a separate process, stopped by PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from hypothesis import HealthCheck, settings

from ztproxy.app import build_app
from ztproxy.config import load_text
from ztproxy.config.schema import Config
from ztproxy.listener import ProxyRunner, ssl_context

REPO = Path(__file__).resolve().parent.parent

# Property tests judge what the code answers, never how fast: on a busy machine (CI, two
# cores shared with a load test) hypothesis's default 200 ms per example and its "too slow"
# health check fail tests whose answers are right.
settings.register_profile("ztproxy", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ztproxy")

# Fixtures for real external components, one module each.
pytest_plugins = ["tests.support.redis", "tests.support.redis_cluster", "tests.support.idp", "tests.support.posture",
                  "tests.support.nginx", "tests.support.caddy", "tests.support.jupyter",
                  "tests.support.ssf_transmitter", "tests.support.spiffe"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Upstream:
    url: str
    port: int
    requests: list[web.Request] = field(default_factory=list)


UpstreamFactory = Callable[..., Awaitable[Upstream]]


@pytest.fixture
async def start_upstream() -> AsyncIterator[UpstreamFactory]:
    """Start a real HTTP server whose routes the test provides."""
    runners: list[web.AppRunner] = []

    async def start(handler: Callable[[web.Request], Awaitable[web.StreamResponse]] | None = None,
                    *, routes: list[web.RouteDef] | None = None) -> Upstream:
        port = free_port()
        upstream = Upstream(url=f"http://127.0.0.1:{port}", port=port)

        async def default(request: web.Request) -> web.StreamResponse:
            return web.json_response({"method": request.method, "path": request.raw_path,
                                      "headers": [[k, v] for k, v in request.headers.items()]})

        @web.middleware
        async def record(request: web.Request, handler: Any) -> web.StreamResponse:
            upstream.requests.append(request)
            return await handler(request)

        app = web.Application(middlewares=[record])
        if routes:
            app.add_routes(routes)
        else:
            app.router.add_route("*", "/{path:.*}", handler or default)
        # handler_cancellation: the upstream notices when the proxy drops its connection.
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runners.append(runner)
        return upstream

    yield start
    for runner in runners:
        await runner.cleanup()


@dataclass
class Proxy:
    url: str
    port: int
    config: Config


ProxyFactory = Callable[..., Awaitable[Proxy]]


def proxy_yaml(upstream_url: str, *, extra_routes: str = "", server: str = "", allow: str = "[{public: true}]",
               port: int | None = None) -> str:
    port = port or free_port()
    return f"""
server:
  listen: 127.0.0.1:{port}
  admin_listen: null
{server}
routes:
  - name: app
    upstream: {upstream_url}
    allow: {allow}
{extra_routes}
"""


@pytest.fixture
async def start_proxy() -> AsyncIterator[ProxyFactory]:
    """Run ztproxy in this event loop from YAML text (``proxy_yaml`` builds the usual one)."""
    runners: list[ProxyRunner] = []

    async def start(yaml_text: str) -> Proxy:
        config = load_text(yaml_text, "<test>")
        host, _, port = config.server.listen.rpartition(":")
        runner = ProxyRunner(build_app(config), config)
        await runner.setup()
        await web.TCPSite(runner, host, int(port), ssl_context=ssl_context(config)).start()
        runners.append(runner)
        scheme = "https" if config.server.tls else "http"
        return Proxy(url=f"{scheme}://{host}:{port}", port=int(port), config=config)

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session


@pytest.fixture
def collector_off() -> Iterator[None]:
    """No automatic pass of the cyclic collector during the test: only explicit ones free cycles.

    So a test can tell what the code frees from what a lucky automatic pass would.
    """
    enabled = gc.isenabled()
    gc.collect()  # what earlier tests left, so that it is not mistaken for this one's
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@dataclass
class ProxyProcess:
    process: subprocess.Popen[bytes]
    url: str
    admin_url: str
    log_path: Path

    def log_lines(self) -> list[str]:
        return self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()

    def events(self, name: str) -> list[dict[str, Any]]:
        """The JSON log's events called ``name``, in order (a line still being written is skipped)."""
        found = []
        for line in self.log_lines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    event = json.loads(line)
                    if event.get("event") == name:
                        found.append(event)
        return found

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)


def wait_ready(admin_url: str, process: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    # Ready usually within a second or two; the bound is for a busy machine starting several
    # worker processes at once (it only matters when something is wrong).
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"ztproxy exited early with {process.returncode}")
        try:
            with urllib.request.urlopen(f"{admin_url}/readyz", timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.05)
    raise RuntimeError("ztproxy did not become ready in time")


@pytest.fixture
def proxy_process(tmp_path: Path) -> Iterator[Callable[..., ProxyProcess]]:
    """Start ``ztproxy run`` as its own process; always stopped (by PID) at the end."""
    started: list[subprocess.Popen[bytes]] = []

    def start(yaml_text: str, *args: str, wait: bool = True, env: Mapping[str, str] | None = None) -> ProxyProcess:
        """``env``: variables added to the process's environment (e.g. ``SSL_CERT_FILE``)."""
        config_path = tmp_path / f"ztproxy-{len(started)}.yaml"
        config_path.write_text(yaml_text, encoding="utf-8")
        log_path = tmp_path / f"ztproxy-{len(started)}.log"
        config = load_text(yaml_text)
        with open(log_path, "wb") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-m", "ztproxy", "run", "-c", str(config_path), *args],
                stdout=log_file, stderr=subprocess.STDOUT, cwd=REPO,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        started.append(process)
        assert config.server.admin_listen is not None
        result = ProxyProcess(process=process, url=config.public_url,
                              admin_url=f"http://{config.server.admin_listen}", log_path=log_path)
        if wait:
            wait_ready(result.admin_url, process)
        return result

    yield start
    for process in started:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


async def raw_exchange(port: int, payload: bytes, *, read_timeout: float = 5.0) -> tuple[bytes, bool]:
    """Send raw bytes, read until the server closes or goes quiet; return (data, closed_by_server)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(payload)
    await writer.drain()
    chunks: list[bytes] = []
    closed = False
    try:
        while True:
            chunk = await asyncio.wait_for(reader.read(65536), timeout=read_timeout)
            if not chunk:
                closed = True
                break
            chunks.append(chunk)
    except TimeoutError:
        pass
    finally:
        writer.close()
    return b"".join(chunks), closed

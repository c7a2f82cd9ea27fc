"""SIGHUP reload of a real ``ztproxy run``: under load with zero failed requests, invalid files refused."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import ProxyProcess, UpstreamFactory, free_port
from tests.support.idp import ALICE_PASSWORD, IdpFactory
from tests.support.user_agent import UserAgent
from ztproxy.demo_idp import IdpClient

pytestmark = pytest.mark.integration

StartProcess = Callable[..., ProxyProcess]
CLOSED = "[{source_cidrs: [192.0.2.0/24]}]"  # TEST-NET-1: never this test's loopback client


def reload_yaml(upstream_url: str, port: int, admin_port: int, *, other_allow: str = "[{public: true}]") -> str:
    return f"""
server:
  listen: 127.0.0.1:{port}
  admin_listen: 127.0.0.1:{admin_port}
  shutdown_grace: 10s
routes:
  - name: other
    path: /other
    upstream: {upstream_url}
    allow: {other_allow}
  - name: app
    upstream: {upstream_url}
    allow: [{{public: true}}]
"""


INVALID = """
server:
  listen: 127.0.0.1:{port}
  shutdown_grace: 15x
routes:
  - name: app
    upstream: ftp://nowhere
"""


async def wait_for_events(proxy: ProxyProcess, name: str, count: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        found = proxy.events(name)
        if len(found) >= count:
            return found
        assert proxy.process.poll() is None, "\n".join(proxy.log_lines()[-30:])
        await asyncio.sleep(0.05)
    raise AssertionError(f"no {count} {name} events:\n" + "\n".join(proxy.log_lines()[-30:]))


async def status_of(url: str) -> int:
    # A new connection each time: with several workers, each request may reach another one.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        async with session.get(url) as response:
            await response.read()
            return response.status


async def expect_everywhere(url: str, status: int, workers: int) -> None:
    """New connections, enough that each worker is likely to answer some."""
    statuses = [await status_of(url) for _ in range(4 * workers)]
    assert statuses == [status] * len(statuses)


async def load(url: str, stop: asyncio.Event) -> Counter[str]:
    """Requests on keep-alive and on new connections until ``stop``: each outcome counted."""
    outcomes: Counter[str] = Counter()

    async def client(force_close: bool) -> None:
        connector = aiohttp.TCPConnector(force_close=force_close)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=10)) as session:
            while not stop.is_set():
                try:
                    async with session.get(url) as response:
                        await response.read()
                        outcomes[str(response.status)] += 1
                except (aiohttp.ClientError, TimeoutError) as error:
                    outcomes[type(error).__name__] += 1

    await asyncio.gather(*(client(force_close=i % 2 == 0) for i in range(6)))
    return outcomes


@dataclass
class Reloadable:
    proxy: ProxyProcess
    config_path: Path
    upstream_url: str
    port: int
    admin_port: int

    def yaml(self, other_allow: str = "[{public: true}]") -> str:
        return reload_yaml(self.upstream_url, self.port, self.admin_port, other_allow=other_allow)

    def reload(self, yaml_text: str) -> None:
        """Rewrite the config file ztproxy was started with, then SIGHUP."""
        self.config_path.write_text(yaml_text, encoding="utf-8")
        self.proxy.signal(signal.SIGHUP)


async def start_reloadable(start_upstream: UpstreamFactory, proxy_process: StartProcess, tmp_path: Path,
                           workers: int = 1) -> Reloadable:
    upstream = await start_upstream()
    port, admin_port = free_port(), free_port()
    proxy = proxy_process(reload_yaml(upstream.url, port, admin_port), "--workers", str(workers))
    return Reloadable(proxy, tmp_path / "ztproxy-0.yaml", upstream.url, port, admin_port)


@pytest.mark.parametrize("workers", [1, 2])
async def test_sighup_swaps_the_config_under_load_without_a_failed_request(
        start_upstream: UpstreamFactory, proxy_process: StartProcess, tmp_path: Path, workers: int) -> None:
    running = await start_reloadable(start_upstream, proxy_process, tmp_path, workers)
    proxy = running.proxy
    assert await status_of(f"{proxy.url}/other/x") == 200

    stop = asyncio.Event()
    traffic = asyncio.create_task(load(f"{proxy.url}/app", stop))
    await asyncio.sleep(1.0)
    running.reload(running.yaml(other_allow=CLOSED))
    await wait_for_events(proxy, "config_reloaded", workers)
    await asyncio.sleep(1.5)  # the old configuration retires while traffic goes on
    stop.set()
    outcomes = await traffic

    assert set(outcomes) == {"200"}, outcomes  # no connection error, no 5xx, nothing refused
    assert outcomes["200"] > 50
    await expect_everywhere(f"{proxy.url}/other/x", 403, workers)  # every worker has the new policy
    assert await status_of(f"{proxy.url}/app") == 200
    assert not proxy.events("config_reload_failed")
    async with aiohttp.ClientSession() as session, session.get(f"{proxy.admin_url}/readyz") as ready:
        assert ready.status == 200
        metrics = await (await session.get(f"{proxy.admin_url}/metrics")).text()
    assert 'result="ok"' in metrics


@pytest.mark.parametrize("workers", [1, 2])
async def test_an_invalid_config_is_logged_with_every_error_and_the_old_one_keeps_serving(
        start_upstream: UpstreamFactory, proxy_process: StartProcess, tmp_path: Path, workers: int) -> None:
    running = await start_reloadable(start_upstream, proxy_process, tmp_path, workers)
    proxy = running.proxy
    running.reload(INVALID.format(port=running.port))

    [failed] = await wait_for_events(proxy, "config_reload_failed", 1)
    issues = "\n".join(failed["issues"])
    assert "server.shutdown_grace" in issues and "routes[0].upstream" in issues, issues  # all of them
    assert failed["error_count"] >= 2
    await expect_everywhere(f"{proxy.url}/other/x", 200, workers)  # still the running configuration
    await asyncio.sleep(0.2)
    assert len(proxy.events("config_reload_failed")) == 1  # once, by the supervisor with workers
    assert not proxy.events("config_reloaded")
    assert proxy.process.poll() is None

    # The file fixed: the next SIGHUP applies it.
    running.reload(running.yaml(other_allow=CLOSED))
    await wait_for_events(proxy, "config_reloaded", workers)
    await expect_everywhere(f"{proxy.url}/other/x", 403, workers)


async def test_listener_settings_changed_by_a_reload_wait_for_a_restart(
        start_upstream: UpstreamFactory, proxy_process: StartProcess, tmp_path: Path) -> None:
    running = await start_reloadable(start_upstream, proxy_process, tmp_path)
    proxy = running.proxy
    running.reload(reload_yaml(running.upstream_url, free_port(), running.admin_port, other_allow=CLOSED))
    [warning] = await wait_for_events(proxy, "config_reload_needs_restart", 1)
    assert warning["settings"] == ["server.listen"]
    await wait_for_events(proxy, "config_reloaded", 1)
    assert await status_of(f"{proxy.url}/other/x") == 403  # the rest applied, on the same listener


async def test_a_signed_in_session_survives_a_reload(start_idp: IdpFactory, start_upstream: UpstreamFactory,
                                                     proxy_process: StartProcess, tmp_path: Path) -> None:
    upstream = await start_upstream()
    port, admin_port = free_port(), free_port()
    public = f"http://127.0.0.1:{port}"
    idp = await start_idp(clients=[IdpClient(
        client_id="ztproxy", client_secret="proxy-client-secret-for-tests",
        redirect_uris=(f"{public}/.ztproxy/callback",),
        post_logout_redirect_uris=(f"{public}/.ztproxy/signed-out",))])

    def signed_in_yaml(sessions: str = "", extra_route: str = "") -> str:
        # No cookie_secrets: the one generated at start must outlive the reload too.
        return f"""
server:
  listen: 127.0.0.1:{port}
  admin_listen: 127.0.0.1:{admin_port}
identity_providers:
  - name: demo
    issuer: {idp.issuer}
    client_id: ztproxy
    client_secret: proxy-client-secret-for-tests
    scopes: [openid, email, profile, groups]
sessions:
  store: memory
{sessions}
routes:
  - name: app
    path: /app
    upstream: {upstream.url}
    allow: [{{email_domains: [corp.example]}}]
{extra_route}
"""

    proxy = proxy_process(signed_in_yaml())
    async with UserAgent() as agent:
        final = await agent.login(f"{public}/app/page", "alice", ALICE_PASSWORD)
        assert final.status == 200, final.text[:500]
        # Other session settings and a new route: a new configuration, the same memory store.
        (tmp_path / "ztproxy-0.yaml").write_text(signed_in_yaml(
            sessions="  idle_timeout: 2h",
            extra_route=f"  - {{name: new, path: /new, upstream: '{upstream.url}', allow: [{{public: true}}]}}"),
            encoding="utf-8")
        proxy.signal(signal.SIGHUP)
        await wait_for_events(proxy, "config_reloaded", 1)
        assert (await agent.get(f"{public}/new/x")).status == 200  # the new configuration serves
        again = await agent.get(f"{public}/app/other")
        assert again.status == 200, again.location  # still signed in: no redirect to the IdP


@pytest.mark.parametrize("workers", [1, 2])
async def test_with_watch_config_a_changed_file_reloads_without_a_signal(
        start_upstream: UpstreamFactory, proxy_process: StartProcess, tmp_path: Path, workers: int) -> None:
    upstream = await start_upstream()
    port, admin_port = free_port(), free_port()

    def watched(other_allow: str) -> str:
        return reload_yaml(upstream.url, port, admin_port, other_allow=other_allow).replace(
            "  shutdown_grace: 10s", "  shutdown_grace: 10s\n  watch_config: true")

    proxy = proxy_process(watched("[{public: true}]"), "--workers", str(workers))
    assert await status_of(f"{proxy.url}/other/x") == 200
    # Replaced, not edited in place: what editors and ConfigMap updates do.
    config_path = tmp_path / "ztproxy-0.yaml"
    staged = tmp_path / "staged.yaml"
    staged.write_text(watched(CLOSED), encoding="utf-8")
    staged.replace(config_path)
    await wait_for_events(proxy, "config_reloaded", workers)
    await expect_everywhere(f"{proxy.url}/other/x", 403, workers)
    assert proxy.events("config_file_changed")

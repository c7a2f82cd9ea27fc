"""Device posture through the proxy: a device certificate over real TLS, the inventory, the policy."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import Proxy, ProxyFactory, UpstreamFactory, free_port
from tests.support.posture import DevicePki


def write_inventory(path: Path, devices: dict[str, dict[str, object]]) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(devices))
    temporary.replace(path)


@pytest.fixture
async def proxy(tmp_path: Path, device_pki: DevicePki, start_proxy: ProxyFactory,
                start_upstream: UpstreamFactory) -> Proxy:
    upstream = await start_upstream()
    inventory = tmp_path / "devices.json"
    write_inventory(inventory, {
        "laptop-1": {"managed": True, "disk_encrypted": True, "platform": "macos", "os_version": "14.2"},
        "laptop-2": {"managed": False},
    })
    return await start_proxy(f"""
server:
  listen: 127.0.0.1:{free_port()}
  admin_listen: null
  tls: {device_pki.tls_yaml()}
  trusted_proxies: [127.0.0.1]  # forward-auth: 127.0.0.1 may ask /.ztproxy/auth
devices:
  client_certificate: {{}}
  inventory: {{file: '{inventory}', reload_interval: 0.2s}}
routes:
  - name: managed
    path: /managed
    upstream: {upstream.url}
    allow: [{{device: {{managed: true, disk_encrypted: true}}}}]
  - name: open
    path: /open
    upstream: {upstream.url}
    allow: [{{public: true}}]
""")


async def get(proxy: Proxy, device_pki: DevicePki, path: str, device: str | None) -> tuple[int, str]:
    certificate = device_pki.device(device) if device is not None else None
    connector = aiohttp.TCPConnector(ssl=device_pki.client_context(certificate))
    async with aiohttp.ClientSession(connector=connector) as client:
        async with client.get(proxy.url + path) as response:
            return response.status, await response.text()


async def test_a_managed_device_is_let_in(proxy: Proxy, device_pki: DevicePki) -> None:
    assert (await get(proxy, device_pki, "/managed/x", "laptop-1"))[0] == 200


async def test_an_unmanaged_or_unknown_device_gets_a_page_saying_why(proxy: Proxy, device_pki: DevicePki) -> None:
    status, text = await get(proxy, device_pki, "/managed/x", "laptop-2")
    assert status == 403 and "requires a device managed by your organisation" in text
    status, text = await get(proxy, device_pki, "/managed/x", None)
    assert status == 403 and "requires a known device" in text
    # Public routes need no device at all.
    assert (await get(proxy, device_pki, "/open/x", None))[0] == 200


async def test_a_device_that_falls_out_of_compliance_loses_access_within_the_reload_interval(
        tmp_path: Path, proxy: Proxy, device_pki: DevicePki) -> None:
    assert (await get(proxy, device_pki, "/managed/x", "laptop-1"))[0] == 200
    write_inventory(tmp_path / "devices.json", {"laptop-1": {"managed": True, "disk_encrypted": False}})
    deadline = time.monotonic() + 5
    while (status := (await get(proxy, device_pki, "/managed/x", "laptop-1"))[0]) == 200:
        assert time.monotonic() < deadline, "the inventory change was never applied"
        await asyncio.sleep(0.1)
    assert status == 403


async def test_an_expired_device_certificate_still_reaches_public_routes(proxy: Proxy,
                                                                         device_pki: DevicePki) -> None:
    connector = aiohttp.TCPConnector(ssl=device_pki.client_context(device_pki.expired("laptop-1")))
    async with aiohttp.ClientSession(connector=connector) as client:
        async with client.get(proxy.url + "/open/") as response:
            assert response.status == 200
        async with client.get(proxy.url + "/managed/") as response:
            assert response.status == 403  # but it identifies no device


async def test_in_forward_auth_the_calling_proxys_certificate_is_no_device(proxy: Proxy,
                                                                           device_pki: DevicePki) -> None:
    # The calling proxy (nginx asking /.ztproxy/auth) presents a certificate of the device CA:
    # it is the proxy's, not the device of the user it asks about, who has none.
    connector = aiohttp.TCPConnector(ssl=device_pki.client_context(device_pki.device("laptop-1")))
    described = {"X-Forwarded-Method": "GET", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "apps.corp.example",
                 "X-Forwarded-Uri": "/managed/x", "Accept": "application/json"}
    async with aiohttp.ClientSession(connector=connector) as client:
        async with client.get(proxy.url + "/.ztproxy/auth", headers=described) as response:
            assert response.status == 403, await response.text()
            body = await response.json()
            assert body["error"] == "access-denied" and "requires a known device" in body["message"], body
        async with client.get(proxy.url + "/managed/x") as response:  # the same certificate asking itself
            assert response.status == 200

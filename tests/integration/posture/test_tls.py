"""Real TLS handshakes with device certificates against the listener's ``ssl_context``.

What actually happens, for TLS 1.2 and 1.3 (asserted here, documented in client_cert.py):
no certificate and expired or not-yet-valid device certificates are served (the latter
without a device); a certificate from another CA fails the connection (alert unknown_ca).
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import free_port
from tests.support.posture import DAY, DevicePki, Issued
from ztproxy.config import load_text
from ztproxy.listener import ssl_context
from ztproxy.posture import Posture, PostureQuery, peer_certificate

pytestmark = pytest.mark.integration

VERSIONS = pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3],
                                   ids=["tls1.2", "tls1.3"])


@dataclass
class Server:
    url: str
    served: list[bool] = field(default_factory=list)  # whether each request carried a certificate


StartServer = Callable[..., Awaitable[Server]]


@pytest.fixture
async def start_server(device_pki: DevicePki, tmp_path: Path) -> AsyncIterator[StartServer]:
    """An aiohttp server with ztproxy's TLS context that answers with the request's device."""
    runners: list[web.AppRunner] = []
    postures: list[Posture] = []

    async def start(*, client_ca: bool = True, devices: str = "{client_certificate: {}}") -> Server:
        port = free_port()
        config = load_text(f"""
server: {{listen: '127.0.0.1:{port}', admin_listen: null, tls: {device_pki.tls_yaml(client_ca=client_ca)}}}
devices: {devices}
routes: [{{name: app, upstream: 'http://127.0.0.1:1'}}]
""")
        posture = Posture.from_config(config)
        await posture.start()
        postures.append(posture)
        server = Server(url=f"https://127.0.0.1:{port}")

        async def handle(request: web.Request) -> web.Response:
            der = peer_certificate(request.transport)
            server.served.append(der is not None)
            device = await posture.device_for(PostureQuery(peer_certificate=der, headers=request.headers,
                                                           subject=None, now=datetime.now(UTC)))
            return web.json_response({"certificate": der is not None, "device": device and device.id,
                                      "managed": device and device.managed})

        app = web.Application()
        app.router.add_get("/", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port, ssl_context=ssl_context(config)).start()
        runners.append(runner)
        return server

    yield start
    for runner in runners:
        await runner.cleanup()
    for posture in postures:
        await posture.close()


async def fetch(pki: DevicePki, server: Server, certificate: Issued | None,
                version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3) -> dict[str, object]:
    connector = aiohttp.TCPConnector(ssl=pki.client_context(certificate, max_version=version))
    async with aiohttp.ClientSession(connector=connector) as session, session.get(server.url) as response:
        assert response.status == 200
        result: dict[str, object] = await response.json()
        return result


@VERSIONS
async def test_a_valid_device_certificate_identifies_the_device(device_pki: DevicePki, start_server: StartServer,
                                                                version: ssl.TLSVersion) -> None:
    server = await start_server()
    answer = await fetch(device_pki, server, device_pki.device("mbp-42"), version)
    assert answer == {"certificate": True, "device": "mbp-42", "managed": False}


@VERSIONS
async def test_without_a_certificate_the_request_is_served_without_a_device(
        device_pki: DevicePki, start_server: StartServer, version: ssl.TLSVersion) -> None:
    server = await start_server()
    assert await fetch(device_pki, server, None, version) == {"certificate": False, "device": None,
                                                              "managed": None}


@VERSIONS
async def test_an_expired_or_future_certificate_is_served_without_a_device(
        device_pki: DevicePki, start_server: StartServer, version: ssl.TLSVersion) -> None:
    server = await start_server()
    now = datetime.now(UTC)
    future = device_pki.device("dev-2", not_before=now + DAY, not_after=now + 10 * DAY)
    for certificate in (device_pki.expired("dev-1"), future):
        # The handshake succeeds (the listener does not check dates); the provider refuses it.
        assert await fetch(device_pki, server, certificate, version) == {"certificate": True, "device": None,
                                                                         "managed": None}


@VERSIONS
async def test_a_certificate_from_another_ca_fails_the_connection(device_pki: DevicePki, start_server: StartServer,
                                                                  version: ssl.TLSVersion) -> None:
    server = await start_server()
    # TLS 1.2: the handshake fails. TLS 1.3: the client's handshake completes (it sends its
    # certificate last), then the server's alert closes the connection before any answer.
    with pytest.raises(aiohttp.ClientConnectionError):
        await fetch(device_pki, server, device_pki.device("dev-1", ca=device_pki.other_ca), version)
    assert server.served == []
    # The client is not locked out: without that certificate it is served.
    assert (await fetch(device_pki, server, None, version))["certificate"] is False


async def test_without_client_ca_file_no_certificate_is_asked_for(device_pki: DevicePki,
                                                                 start_server: StartServer) -> None:
    server = await start_server(client_ca=False, devices="{}")
    assert await fetch(device_pki, server, device_pki.device("mbp-42")) == {"certificate": False, "device": None,
                                                                            "managed": None}


async def test_the_certificate_names_the_device_the_inventory_describes(
        device_pki: DevicePki, start_server: StartServer, tmp_path: Path) -> None:
    inventory = tmp_path / "devices.yaml"
    inventory.write_text("mbp-42: {managed: true}\nold-laptop: {revoked: true}\n")
    server = await start_server(devices=f"{{client_certificate: {{}}, inventory: {{file: '{inventory}'}}}}")
    assert await fetch(device_pki, server, device_pki.device("mbp-42")) == {"certificate": True, "device": "mbp-42",
                                                                            "managed": True}
    assert (await fetch(device_pki, server, device_pki.device("old-laptop")))["device"] is None


async def test_tls12_offers_only_forward_secret_aead_ciphers(device_pki: DevicePki, start_server: StartServer) -> None:
    server = await start_server()
    cbc = "ECDHE-RSA-AES128-SHA256:ECDHE-ECDSA-AES128-SHA256:ECDHE-RSA-AES256-SHA384:ECDHE-ECDSA-AES256-SHA384"
    for weak in (cbc, "AES128-GCM-SHA256:AES256-GCM-SHA384"):
        # CBC (no AEAD: forbidden under HTTP/2, RFC 9113 9.2.2) and static RSA key exchange (no forward secrecy)
        context = device_pki.client_context(None, max_version=ssl.TLSVersion.TLSv1_2)
        context.set_ciphers(weak)
        connector = aiohttp.TCPConnector(ssl=context)
        with pytest.raises(aiohttp.ClientConnectionError):
            async with aiohttp.ClientSession(connector=connector) as session, session.get(server.url):
                pass
    assert server.served == []
    context = device_pki.client_context(None, max_version=ssl.TLSVersion.TLSv1_2)
    context.set_ciphers("ECDHE+AESGCM")
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session, \
            session.get(server.url) as response:
        assert response.status == 200

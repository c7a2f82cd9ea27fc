"""Workloads calling with X.509 SVIDs over mutual TLS, on the listener that takes device certificates.

The proxy trusts two SPIFFE trust domains (corp.example, partner.example) besides the device
CA. An SVID of corp.example passes a ``services`` rule and the app receives its assertion;
every certificate that must not identify a workload is refused, and the app never called.
The trust bundle files are replaced on disk while the proxy runs.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import WSMsgType, web
from structlog.testing import capture_logs

from tests.conftest import ProxyFactory, UpstreamFactory, free_port
from tests.integration.test_revocation import ws_echo
from tests.support.posture import Issued
from tests.support.spiffe import CORP, SpiffePki
from ztproxy.workloads.bundles import CHECK_INTERVAL

pytestmark = pytest.mark.integration

BILLING = "spiffe://corp.example/billing/api"


@dataclass
class World:
    pki: SpiffePki
    url: str
    upstream: Any

    async def call(self, path: str, certificate: Issued | None, *, token: str | None = None,
                   version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3) -> tuple[int, dict[str, str], Any]:
        headers = {"Accept": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        connector = aiohttp.TCPConnector(ssl=self.pki.client_context(certificate, max_version=version))
        async with aiohttp.ClientSession(connector=connector) as client, \
                client.get(self.url + path, headers=headers) as response:
            return response.status, dict(response.headers), await response.json()

    def upstream_saw(self, body: Any) -> dict[str, str]:
        return {name.lower(): value for name, value in body["headers"]}


async def echo(request: web.Request) -> web.StreamResponse:
    return web.json_response({"headers": [[k, v] for k, v in request.headers.items()]})


@pytest.fixture
async def world(spiffe_pki: SpiffePki, start_proxy: ProxyFactory, start_upstream: UpstreamFactory) -> World:
    upstream = await start_upstream(routes=[web.get("/billing/ws", ws_echo), web.route("*", "/{path:.*}", echo)])
    port = free_port()
    proxy = await start_proxy(f"""
server: {{listen: 127.0.0.1:{port}, admin_listen: null, tls: {spiffe_pki.tls_yaml()}}}
workload_identity: {spiffe_pki.workload_yaml()}
devices: {{client_certificate: {{}}}}
identity_providers:
  - {{name: corp, issuer: "http://127.0.0.1:1", client_id: ztproxy, client_secret: not-asked-in-these-tests}}
sessions:
  cookie_secrets: [0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef]
routes:
  - {{name: billing, path: /billing, upstream: "{upstream.url}", audience: "https://billing.corp.example",
     allow: [{{services: ["spiffe://corp.example/billing/*"]}}]}}
  - {{name: people, path: /people, upstream: "{upstream.url}", allow: [{{email_domains: [corp.example]}}]}}
""")
    return World(spiffe_pki, proxy.url, upstream)


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["tls1.2", "tls1.3"])
async def test_an_svid_of_the_trust_domain_reaches_the_app_as_the_workload(world: World,
                                                                          version: ssl.TLSVersion) -> None:
    with capture_logs() as logs:
        status, _, body = await world.call("/billing/invoices", world.pki.svid(BILLING), version=version)
    assert status == 200, body
    # Its certificate is the workload's: the device provider does not look at it.
    assert not [event for event in logs if event["event"].endswith("_certificate_rejected")]
    seen = world.upstream_saw(body)
    assert seen["x-ztproxy-user"] == BILLING
    claims = jwt.decode(seen["x-ztproxy-jwt-assertion"], options={"verify_signature": False})
    assert claims["caller"] == "service" and claims["sub"] == BILLING and claims["spiffe_id"] == BILLING
    assert claims["binding"] == "mtls" and claims["aud"] == "https://billing.corp.example"
    assert "client_id" not in claims and "email" not in claims and "groups" not in claims


async def test_a_workloads_websocket_closes_when_its_certificate_expires(world: World) -> None:
    not_after = (datetime.now(UTC) + timedelta(seconds=4)).replace(microsecond=0)
    certificate = world.pki.svid(BILLING, not_before=not_after - timedelta(days=1), not_after=not_after)
    connector = aiohttp.TCPConnector(ssl=world.pki.client_context(certificate))
    async with aiohttp.ClientSession(connector=connector) as client:
        async with client.ws_connect(world.url + "/billing/ws") as ws:
            await ws.send_str("hi")
            assert (await ws.receive(timeout=10)).data == "echo:hi"
            message = await ws.receive(timeout=30)  # the proxy closes the socket at the certificate's notAfter
            assert message.type is WSMsgType.CLOSE, message
            assert (message.data, message.extra) == (1008, "credential expired")
            assert datetime.now(UTC) >= not_after
        status, _, body = await world.call("/billing/invoices", certificate)  # and lets it in no more
        assert (status, body["error"]) == (401, "authentication-required"), body


async def test_an_svid_the_rule_does_not_name_is_refused(world: World) -> None:
    status, _, body = await world.call("/billing/invoices", world.pki.svid("spiffe://corp.example/reports/api"))
    assert status == 403 and body["error"] == "access-denied"  # JSON for a workload, whatever it accepts
    assert world.upstream.requests == []


@pytest.mark.parametrize(("case", "reason"), [
    ("another trust domain, signed by corp's CA", "trust-domain-mismatch"),
    ("expired", "expired"),
    ("two URI SANs", "several-uri-sans"),
    ("no URI SAN", "no-spiffe-id"),
    ("a CA certificate", "ca-certificate"),
])
async def test_a_certificate_that_is_no_svid_gives_no_service(world: World, case: str, reason: str) -> None:
    pki = world.pki
    corp = pki.authorities[CORP]
    certificate = {
        "another trust domain, signed by corp's CA": lambda: pki.svid("spiffe://partner.example/billing/api", ca=corp),
        "expired": lambda: pki.expired_svid(BILLING),
        "two URI SANs": lambda: pki.svid(uris=[BILLING, "spiffe://corp.example/billing/other"], ca=corp),
        "no URI SAN": lambda: pki.svid(None, ca=corp),
        "a CA certificate": lambda: pki.svid(BILLING, ca_flag=True),
    }[case]()
    with capture_logs() as logs:
        status, headers, body = await world.call("/billing/invoices", certificate)
    # The handshake succeeded (a configured CA verified the chain); the request has no service.
    assert status == 401 and headers["WWW-Authenticate"] == 'Bearer realm="ztproxy"', body
    rejected = [event for event in logs if event["event"] == "workload_certificate_rejected"]
    assert [event["reason"] for event in rejected] == [reason] and rejected[0]["trust_domain"] == CORP
    assert world.upstream.requests == []


async def test_a_certificate_of_an_unknown_ca_fails_the_handshake(world: World) -> None:
    with pytest.raises(aiohttp.ClientConnectionError):
        await world.call("/billing/invoices", world.pki.svid(BILLING, ca=world.pki.unknown_ca))
    assert world.upstream.requests == []


async def test_a_device_certificate_is_no_service_and_a_workload_is_no_person(world: World) -> None:
    with capture_logs() as logs:
        status, _, _ = await world.call("/billing/invoices", world.pki.device("mbp-42"))
    assert status == 401  # service-required: a device is not a workload
    assert not [event for event in logs if event["event"] == "workload_certificate_rejected"]
    # A route for people: the workload is not signed in as anyone.
    status, headers, _ = await world.call("/people/home", world.pki.svid(BILLING))
    assert status == 401 and headers["WWW-Authenticate"] == 'Bearer realm="ztproxy"'
    assert world.upstream.requests == []


async def test_a_bearer_token_beside_the_certificate_is_judged_alone(world: World) -> None:
    # The token decides (here: of an issuer not trusted), not the valid SVID beside it.
    token = jwt.encode({"iss": "https://elsewhere.example", "sub": BILLING}, "k" * 32, algorithm="HS256")
    status, headers, _ = await world.call("/billing/invoices", world.pki.svid(BILLING), token=token)
    assert status == 401 and 'error="invalid_token"' in headers["WWW-Authenticate"]
    assert world.upstream.requests == []


async def test_a_bundle_replaced_on_disk_takes_effect_without_a_restart(world: World) -> None:
    pki = world.pki
    old_svid = pki.svid(BILLING)
    assert (await world.call("/billing/x", old_svid))[0] == 200
    # Rotation: the new CA joins the bundle, then the old one leaves it.
    pki.write_bundle(CORP, pki.authorities[CORP], pki.unknown_ca)
    await asyncio.sleep(CHECK_INTERVAL + 0.1)
    new_svid = pki.svid(BILLING, ca=pki.unknown_ca)
    assert (await world.call("/billing/x", new_svid))[0] == 200
    assert (await world.call("/billing/x", old_svid))[0] == 200
    pki.write_bundle(CORP, pki.unknown_ca)
    await asyncio.sleep(CHECK_INTERVAL + 0.1)
    assert (await world.call("/billing/x", new_svid))[0] == 200
    with pytest.raises(aiohttp.ClientConnectionError):  # the removed CA: the handshake fails now
        await world.call("/billing/x", old_svid)


async def test_in_forward_auth_the_calling_proxys_certificate_is_no_workload(
        spiffe_pki: SpiffePki, start_proxy: ProxyFactory, start_upstream: UpstreamFactory) -> None:
    upstream = await start_upstream()
    port = free_port()
    await start_proxy(f"""
server: {{listen: 127.0.0.1:{port}, admin_listen: null, tls: {spiffe_pki.tls_yaml()}, trusted_proxies: [127.0.0.1]}}
workload_identity: {spiffe_pki.workload_yaml()}
routes:
  - {{name: billing, path: /billing, upstream: "{upstream.url}", allow: [{{services: ["spiffe://corp.example/**"]}}]}}
""")
    world = World(spiffe_pki, f"https://127.0.0.1:{port}", upstream)
    # The calling proxy presents its own SVID (a mesh sidecar would): the original caller has none.
    connector = aiohttp.TCPConnector(ssl=spiffe_pki.client_context(spiffe_pki.svid("spiffe://corp.example/nginx")))
    described = {"X-Forwarded-Method": "GET", "X-Forwarded-Proto": "https", "X-Forwarded-Host": f"127.0.0.1:{port}",
                 "X-Forwarded-Uri": "/billing/x", "Accept": "application/json"}
    async with aiohttp.ClientSession(connector=connector) as client, \
            client.get(world.url + "/.ztproxy/auth", headers=described) as response:
        assert response.status == 401
    # The same certificate calling the route itself is that workload.
    assert (await world.call("/billing/x", spiffe_pki.svid("spiffe://corp.example/nginx")))[0] == 200

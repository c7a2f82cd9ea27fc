"""Sender-constrained access tokens: DPoP-bound (RFC 9449) and certificate-bound (RFC 8705).

The real oidc-provider binds the tokens it issues: to the key of the DPoP proof sent with the
token request (cnf.jkt), or to the client certificate a TLS terminator in front of it passes on
(cnf.x5t#S256). ztproxy runs with TLS and device-style client certificates from a CA the test
makes. Every way to use a bound token without its proof is refused.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from joserfc import jwt as jose_jwt
from joserfc.jwk import ECKey

from tests.conftest import ProxyFactory, UpstreamFactory, free_port
from tests.support.idp import IdpFactory
from tests.support.posture import DevicePki
from ztproxy.demo_idp import DemoIdp, IdpClient, IdpResource, IdpService
from ztproxy.oidc.dpop import access_token_hash

pytestmark = pytest.mark.integration

ORDERS = "https://orders.corp.example"
BILLING = IdpService("billing", "billing-secret-for-tests-0123456789", ("orders.read",))
MINTER = IdpService("minter", "minter-secret-for-tests-0123456789", ("orders.read",), certificate_bound=True)


def proof(key: ECKey, method: str, url: str, token: str | None = None, **claims: Any) -> str:
    """A DPoP proof (RFC 9449 4.2) signed with ``key``."""
    body: dict[str, Any] = {"jti": secrets.token_urlsafe(12), "htm": method, "htu": url, "iat": int(time.time())}
    if token is not None:
        body["ath"] = access_token_hash(token)
    body.update(claims)
    header = {"typ": "dpop+jwt", "alg": "ES256", "jwk": key.as_dict(private=False)}
    return jose_jwt.encode(header, body, key, algorithms=["ES256"])


class World:
    def __init__(self, idp: DemoIdp, url: str, pki: DevicePki) -> None:
        self.idp = idp
        self.url = url
        self.pki = pki

    async def call(self, path: str, headers: dict[str, str], certificate: Any = None,
                   method: str = "GET") -> tuple[int, dict[str, str], Any]:
        context = self.pki.client_context(certificate)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as client:
            async with client.request(method, self.url + path, headers=headers) as response:
                body = await response.json(content_type=None)
                return response.status, dict(response.headers), body


@pytest.fixture
async def world(start_idp: IdpFactory, start_proxy: ProxyFactory, start_upstream: UpstreamFactory,
                device_pki: DevicePki) -> World:
    upstream = await start_upstream()
    port = free_port()
    public = f"https://localhost:{port}"
    idp = await start_idp(
        clients=[IdpClient(client_id="ztproxy", client_secret="proxy-client-secret-for-tests",
                           redirect_uris=(f"{public}/.ztproxy/callback",))],
        services=[BILLING, MINTER], resources=[IdpResource(ORDERS, ("orders.read",))])
    await start_proxy(f"""
server:
  listen: 127.0.0.1:{port}
  public_url: {public}
  admin_listen: null
  tls: {device_pki.tls_yaml()}
  trusted_proxies: [127.0.0.1]  # forward-auth: 127.0.0.1 may ask /.ztproxy/auth
identity_providers:
  - {{name: demo, issuer: "{idp.issuer}", client_id: ztproxy, client_secret: proxy-client-secret-for-tests}}
routes:
  - {{name: orders, path: /orders, upstream: "{upstream.url}", audience: "{ORDERS}",
     allow: [{{clients: [billing, minter]}}]}}
  - {{name: bound, path: /bound, upstream: "{upstream.url}", audience: "{ORDERS}",
     allow: [{{clients: [billing, minter], sender_constrained: true}}]}}
""")
    return World(idp, public, device_pki)


def assertion_of(body: dict[str, Any]) -> dict[str, Any]:
    headers = {name.lower(): value for name, value in body["headers"]}
    return jwt.decode(headers["x-ztproxy-jwt-assertion"], options={"verify_signature": False})


async def dpop_token(world: World, key: ECKey) -> str:
    return await world.idp.client_credentials(BILLING, ORDERS, ["orders.read"],
                                              dpop_proof=proof(key, "POST", f"{world.idp.issuer}/token"))


async def test_a_dpop_bound_token_with_its_proof_passes_and_says_so(world: World) -> None:
    key = ECKey.generate_key("P-256")
    token = await dpop_token(world, key)
    assert jwt.decode(token, options={"verify_signature": False})["cnf"]["jkt"] == key.thumbprint()
    for path in ("/orders/a", "/bound/a", "/orders/a"):  # the second use of the token: from the cache
        status, _, body = await world.call(path, {"Authorization": f"DPoP {token}",
                                                  "DPoP": proof(key, "GET", world.url + path, token)})
        assert status == 200, body
        assert assertion_of(body)["binding"] == "dpop"


async def test_a_dpop_bound_token_without_its_proof_is_refused(world: World) -> None:
    key, thief = ECKey.generate_key("P-256"), ECKey.generate_key("P-256")
    token = await dpop_token(world, key)
    url = world.url + "/orders/a"
    used = proof(key, "GET", url, token)
    assert (await world.call("/orders/a", {"Authorization": f"DPoP {token}", "DPoP": used}))[0] == 200
    cases = {
        "as a plain bearer token": {"Authorization": f"Bearer {token}"},
        "without a proof": {"Authorization": f"DPoP {token}"},
        "a proof used before": {"Authorization": f"DPoP {token}", "DPoP": used},
        "a proof of another key": {"Authorization": f"DPoP {token}", "DPoP": proof(thief, "GET", url, token)},
        "a proof for another URL": {"Authorization": f"DPoP {token}",
                                    "DPoP": proof(key, "GET", world.url + "/bound/a", token)},
        "a proof for another method": {"Authorization": f"DPoP {token}", "DPoP": proof(key, "POST", url, token)},
        "a proof without the token's hash": {"Authorization": f"DPoP {token}", "DPoP": proof(key, "GET", url)},
        "a proof for another token": {"Authorization": f"DPoP {token}",
                                      "DPoP": proof(key, "GET", url, token + "x")},
        "a proof from the past": {"Authorization": f"DPoP {token}",
                                  "DPoP": proof(key, "GET", url, token, iat=int(time.time()) - 3600)},
    }
    for case, headers in cases.items():
        status, response_headers, body = await world.call("/orders/a", headers)
        assert status == 401, case
        assert response_headers["WWW-Authenticate"].startswith("DPoP "), case
        assert 'error="invalid_dpop_proof"' in response_headers["WWW-Authenticate"], case
        assert body["error"] == "invalid-token", case


async def test_a_plain_bearer_token_cannot_use_the_dpop_scheme_nor_pass_a_sender_constrained_rule(
        world: World) -> None:
    plain = await world.idp.client_credentials(BILLING, ORDERS, ["orders.read"])
    key = ECKey.generate_key("P-256")
    status, _, _ = await world.call("/orders/a", {"Authorization": f"DPoP {plain}",
                                                  "DPoP": proof(key, "GET", world.url + "/orders/a", plain)})
    assert status == 401
    assert (await world.call("/orders/a", {"Authorization": f"Bearer {plain}"}))[0] == 200
    status, headers, body = await world.call("/bound/a", {"Authorization": f"Bearer {plain}"})
    assert status == 401 and 'error="invalid_token"' in headers["WWW-Authenticate"]


async def test_a_certificate_bound_token_passes_only_over_its_certificate(world: World) -> None:
    mine, other = world.pki.device("minter"), world.pki.device("someone-else")
    pem = mine.certificate.public_bytes(serialization.Encoding.PEM).decode()
    token = await world.idp.client_credentials(MINTER, ORDERS, ["orders.read"], client_certificate=pem)
    assert "x5t#S256" in jwt.decode(token, options={"verify_signature": False})["cnf"]
    headers = {"Authorization": f"Bearer {token}"}
    status, _, body = await world.call("/bound/a", headers, certificate=mine)
    assert status == 200, body
    assert assertion_of(body)["binding"] == "mtls"
    for case, certificate in (("another certificate", other), ("no certificate", None)):
        status, response_headers, body = await world.call("/bound/a", headers, certificate=certificate)
        assert status == 401, case
        assert 'error="invalid_token"' in response_headers["WWW-Authenticate"], case
    # In forward-auth the TLS peer is the calling proxy: even when it presents the very
    # certificate, it proves nothing of the token's sender, whose connection ended there.
    described = {**headers, "X-Forwarded-Method": "GET", "X-Forwarded-Proto": "https",
                 "X-Forwarded-Host": world.url.removeprefix("https://"), "X-Forwarded-Uri": "/bound/a"}
    status, response_headers, _ = await world.call("/.ztproxy/auth", described, certificate=mine)
    assert status == 401 and 'error="invalid_token"' in response_headers["WWW-Authenticate"]


async def test_the_dpop_nonce_is_asked_for_when_configured(start_idp: IdpFactory, start_proxy: ProxyFactory,
                                                           start_upstream: UpstreamFactory,
                                                           device_pki: DevicePki) -> None:
    upstream = await start_upstream()
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    idp = await start_idp(clients=[IdpClient(client_id="ztproxy", client_secret="proxy-client-secret-for-tests",
                                             redirect_uris=(f"{public}/.ztproxy/callback",))],
                          services=[BILLING], resources=[IdpResource(ORDERS, ("orders.read",))])
    await start_proxy(f"""
server: {{listen: 127.0.0.1:{port}, admin_listen: null}}
identity_providers:
  - {{name: demo, issuer: "{idp.issuer}", client_id: ztproxy, client_secret: proxy-client-secret-for-tests}}
dpop: {{nonce: true}}
routes:
  - {{name: orders, path: /orders, upstream: "{upstream.url}", audience: "{ORDERS}", allow: [{{clients: [billing]}}]}}
""")
    key = ECKey.generate_key("P-256")
    token = await idp.client_credentials(BILLING, ORDERS, ["orders.read"],
                                         dpop_proof=proof(key, "POST", f"{idp.issuer}/token"))
    url = public + "/orders/a"
    async with aiohttp.ClientSession() as client:
        async with client.get(url, headers={"Authorization": f"DPoP {token}",
                                            "DPoP": proof(key, "GET", url, token)}) as response:
            assert response.status == 401
            assert 'error="use_dpop_nonce"' in response.headers["WWW-Authenticate"]
            nonce = response.headers["DPoP-Nonce"]
        async with client.get(url, headers={"Authorization": f"DPoP {token}",
                                            "DPoP": proof(key, "GET", url, token, nonce=nonce)}) as response:
            assert response.status == 200

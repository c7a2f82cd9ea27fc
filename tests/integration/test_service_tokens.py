"""Services calling with OAuth access tokens (RFC 6750) issued by the real oidc-provider.

The IdP issues client-credentials tokens for resources (RFC 8707): JWTs (RFC 9068) for the
orders API, opaque ones (introspected, RFC 7662) for the archive. Every check the proxy makes
has its negative test: the bad token must be refused, and the app must not have been called.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import WSMsgType, web
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ProxyFactory, UpstreamFactory, free_port
from tests.integration.test_revocation import ws_echo
from tests.support.forgery import tamper
from tests.support.idp import ALICE_PASSWORD, IdpFactory
from tests.support.user_agent import UserAgent
from ztproxy import metrics
from ztproxy.demo_idp import DemoIdp, IdpClient, IdpResource, IdpService
from ztproxy.verify import Verifier

pytestmark = pytest.mark.integration

ORDERS = "https://orders.corp.example"
ARCHIVE = "https://archive.corp.example"
ELSEWHERE = "https://elsewhere.corp.example"  # an API ztproxy does not front
STREAMS = "https://streams.corp.example"  # its tokens live 5 s: long enough to open a socket
BILLING = IdpService("billing", "billing-secret-for-tests-0123456789", ("orders.read", "orders.write"))
REPORTS = IdpService("reports", "reports-secret-for-tests-0123456789", ("orders.read",))


async def echo(request: web.Request) -> web.StreamResponse:
    return web.json_response({"method": request.method, "path": request.raw_path,
                              "headers": [[k, v] for k, v in request.headers.items()]})


class World:
    def __init__(self, idp: DemoIdp, url: str, upstream: Any) -> None:
        self.idp = idp
        self.url = url
        self.upstream = upstream

    async def call(self, path: str, token: str | None = None, **headers: str) -> tuple[int, dict[str, str], Any]:
        sent = dict(headers)
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        async with aiohttp.ClientSession() as client:
            async with client.get(self.url + path, headers=sent) as response:
                body = await response.text()
                try:
                    parsed: Any = json.loads(body)
                except ValueError:
                    parsed = body
                return response.status, dict(response.headers), parsed


@pytest.fixture
async def world(start_idp: IdpFactory, start_proxy: ProxyFactory, start_upstream: UpstreamFactory) -> World:
    upstream = await start_upstream(routes=[web.get("/streams/ws", ws_echo), web.route("*", "/{path:.*}", echo)])
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    idp = await start_idp(
        clients=[IdpClient(client_id="ztproxy", client_secret="proxy-client-secret-for-tests",
                           redirect_uris=(f"{public}/.ztproxy/callback",))],
        services=[BILLING, REPORTS],
        resources=[IdpResource(ORDERS, ("orders.read", "orders.write"), token_ttl=2),
                   IdpResource(ARCHIVE, ("orders.read",), token_format="opaque"),
                   IdpResource(ELSEWHERE, ("orders.read",)),
                   IdpResource(STREAMS, ("orders.read",), token_ttl=5)])
    await start_proxy(f"""
server: {{listen: 127.0.0.1:{port}, admin_listen: null}}
identity_providers:
  - name: demo
    issuer: {idp.issuer}
    client_id: ztproxy
    client_secret: proxy-client-secret-for-tests
    scopes: [openid, email, profile, groups]
    clock_skew: 0s
sessions:
  cookie_secrets: [0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef]
routes:
  - {{name: orders, path: /orders, upstream: "{upstream.url}", audience: "{ORDERS}",
     allow: [{{clients: [billing], scopes: [orders.read]}}]}}
  - {{name: orders-write, path: /orders-write, upstream: "{upstream.url}", audience: "{ORDERS}",
     allow: [{{clients: [billing, reports], scopes: [orders.write]}}]}}
  - {{name: archive, path: /archive, upstream: "{upstream.url}", audience: "{ARCHIVE}",
     allow: [{{clients: [billing]}}]}}
  - {{name: streams, path: /streams, upstream: "{upstream.url}", audience: "{STREAMS}",
     allow: [{{clients: [billing]}}]}}
  - {{name: mixed, path: /mixed, upstream: "{upstream.url}", audience: "{ORDERS}",
     allow: [{{email_domains: [corp.example]}}, {{clients: [billing]}}]}}
""")
    return World(idp, public, upstream)


async def test_a_service_with_a_jwt_access_token_reaches_the_app_as_itself(world: World) -> None:
    token = await world.idp.client_credentials(BILLING, ORDERS, ["orders.read"])
    status, _, body = await world.call("/orders/list", token)
    assert status == 200, body
    seen = {name.lower(): value for name, value in body["headers"]}
    assert seen["x-ztproxy-user"] == "billing"
    claims = jwt.decode(seen["x-ztproxy-jwt-assertion"], options={"verify_signature": False})
    assert claims["caller"] == "service" and claims["sub"] == "billing" and claims["client_id"] == "billing"
    assert claims["scope"] == "orders.read" and claims["binding"] == "none" and claims["aud"] == ORDERS
    assert "groups" not in claims and "email" not in claims
    # Verified once, then remembered until it expires: the same token again is served as well.
    assert (await world.call("/orders/list", token))[0] == 200


async def test_no_token_a_client_not_allowed_and_a_missing_scope(world: World) -> None:
    calls = len(world.upstream.requests)
    status, headers, body = await world.call("/orders/list")
    assert status == 401 and headers["WWW-Authenticate"] == 'Bearer realm="ztproxy"'
    reports = await world.idp.client_credentials(REPORTS, ORDERS, ["orders.read"])
    status, headers, body = await world.call("/orders/list", reports)
    assert status == 403 and body["error"] == "access-denied"  # JSON for a token caller, whatever it accepts
    read_only = await world.idp.client_credentials(BILLING, ORDERS, ["orders.read"])
    status, headers, body = await world.call("/orders-write/x", read_only)
    assert status == 403 and body["error"] == "insufficient-scope"
    assert headers["WWW-Authenticate"] == 'Bearer realm="ztproxy", error="insufficient_scope", scope="orders.write"'
    assert len(world.upstream.requests) == calls  # the app was never called


async def test_tokens_that_must_be_refused(world: World) -> None:
    calls = len(world.upstream.requests)
    token = await world.idp.client_credentials(BILLING, ORDERS, ["orders.read"])
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    unsigned = (base64.urlsafe_b64encode(json.dumps({**header, "alg": "none"}).encode()).rstrip(b"=").decode()
                + "." + token.split(".")[1] + ".")
    hs256 = jwt.encode(jwt.decode(token, options={"verify_signature": False}), BILLING.client_secret,
                       algorithm="HS256", headers={"typ": "at+jwt", "kid": header["kid"]})
    archive_token = await world.idp.client_credentials(BILLING, ARCHIVE, ["orders.read"])
    elsewhere_token = await world.idp.client_credentials(BILLING, ELSEWHERE, ["orders.read"])
    cases = {
        "scope raised after signing": tamper(token, scope="orders.read orders.write"),
        "client changed after signing": tamper(token, client_id="billing", sub="root"),
        "alg none": unsigned,
        "HS256 with the client secret": hs256,
        "not a token": "not-a-token",
        "an opaque token of another resource": archive_token,
        "a JWT of another resource": elsewhere_token,
        "characters no token has": "abc%def",
    }
    for case, bad in cases.items():
        status, headers, body = await world.call("/orders/list", bad)
        assert status == 401, case
        assert headers["WWW-Authenticate"].startswith('Bearer realm="ztproxy", error="invalid_token"'), case
        assert body["error"] == "invalid-token", case
    assert len(world.upstream.requests) == calls


async def test_an_expired_token_is_refused_as_expired(world: World) -> None:
    token = await world.idp.client_credentials(BILLING, ORDERS, ["orders.read"])
    assert (await world.call("/orders/list", token))[0] == 200
    await asyncio.sleep(3)  # the orders tokens live 2 s; no clock skew is tolerated in this world
    status, headers, body = await world.call("/orders/list", token)
    assert status == 401 and 'error="invalid_token"' in headers["WWW-Authenticate"]
    assert "expired" in headers["WWW-Authenticate"] and body["error"] == "invalid-token"


async def test_an_opaque_token_is_introspected_and_the_issuer_down_fails_closed(world: World) -> None:
    token = await world.idp.client_credentials(BILLING, ARCHIVE, ["orders.read"])
    status, _, body = await world.call("/archive/doc", token)
    assert status == 200, body
    assert {name.lower(): value for name, value in body["headers"]}["x-ztproxy-user"] == "billing"
    fresh = await world.idp.client_credentials(BILLING, ARCHIVE, ["orders.read"])
    await world.idp.stop()
    # Already vouched for: served from the cache. Never seen: it cannot be checked, so refused.
    assert (await world.call("/archive/doc", token))[0] == 200
    status, headers, body = await world.call("/archive/doc", fresh)
    assert status == 503 and body["error"] == "token-service-unavailable"


async def test_a_token_is_judged_alone_never_with_the_session_beside_it(world: World) -> None:
    async with UserAgent() as agent:
        page = await agent.login(world.url + "/mixed/", "alice", ALICE_PASSWORD)
        assert page.status == 200  # alice passes the person rule
        async with agent.session.get(world.url + "/mixed/", headers={"Authorization": "Bearer forged.token.x"}
                                     ) as response:
            assert response.status == 401  # the bad token decides, not alice's session
        token = await world.idp.client_credentials(BILLING, ORDERS, ["orders.read"])
        async with agent.session.get(world.url + "/mixed/", headers={"Authorization": f"Bearer {token}"}
                                     ) as response:
            assert response.status == 200
            seen = {name.lower(): value for name, value in (await response.json())["headers"]}
            assert seen["x-ztproxy-user"] == "billing"  # the service, not alice


async def test_the_app_tells_a_service_from_a_person_with_ztproxy_verify(world: World) -> None:
    token = await world.idp.client_credentials(BILLING, ORDERS, ["orders.read"])
    _, _, body = await world.call("/orders/list", token)
    assertion = {name.lower(): value for name, value in body["headers"]}["x-ztproxy-jwt-assertion"]
    async with aiohttp.ClientSession() as client:
        async with client.get(world.url + "/.well-known/ztproxy/jwks.json") as response:
            jwks = await response.json()
    identity = Verifier(issuer=world.url, audience=ORDERS, jwks=jwks).verify(assertion)
    assert identity.is_service and identity.subject == "billing" and identity.client_id == "billing"
    assert identity.scopes == ("orders.read",) and identity.groups == () and identity.email is None


async def test_a_services_websocket_closes_when_its_token_expires(world: World) -> None:
    token = await world.idp.client_credentials(BILLING, STREAMS, ["orders.read"])
    expires = jwt.decode(token, options={"verify_signature": False})["exp"]
    async with aiohttp.ClientSession() as client:
        async with client.ws_connect(world.url + "/streams/ws", headers={"Authorization": f"Bearer {token}"}) as ws:
            await ws.send_str("hi")
            assert (await ws.receive(timeout=10)).data == "echo:hi"
            message = await ws.receive(timeout=30)  # the token lives 5 s: the proxy closes the socket then
            assert message.type is WSMsgType.CLOSE, message
            assert (message.data, message.extra) == (1008, "credential expired")
            assert time.time() >= expires  # not before its time
        # The same token opens no new socket.
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await client.ws_connect(world.url + "/streams/ws", headers={"Authorization": f"Bearer {token}"})
        assert refused.value.status == 401


async def test_token_issuers_are_trusted_only_where_a_route_lists_them(start_idp: IdpFactory,
                                                                       start_proxy: ProxyFactory,
                                                                       start_upstream: UpstreamFactory) -> None:
    upstream = await start_upstream()
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    sign_in = await start_idp(clients=[IdpClient(client_id="ztproxy", client_secret="proxy-client-secret-for-tests",
                                                 redirect_uris=(f"{public}/.ztproxy/callback",))],
                              services=[BILLING], resources=[IdpResource(ORDERS, BILLING.scopes)])
    # A second authorization server, for services only; the proxy's client there may introspect.
    ci = await start_idp(clients=[IdpClient(client_id="ztproxy-at-ci", client_secret="ci-introspection-secret",
                                            redirect_uris=("http://127.0.0.1:9/unused",))],
                         services=[BILLING], resources=[IdpResource(ORDERS, BILLING.scopes),
                                                        IdpResource(ARCHIVE, BILLING.scopes, token_format="opaque")])
    await start_proxy(f"""
server: {{listen: 127.0.0.1:{port}, admin_listen: null}}
identity_providers:
  - {{name: corp, issuer: "{sign_in.issuer}", client_id: ztproxy, client_secret: proxy-client-secret-for-tests}}
token_issuers:
  - {{name: ci, issuer: "{ci.issuer}", client_id: ztproxy-at-ci, client_secret: ci-introspection-secret}}
routes:
  - {{name: ci-api, path: /ci, upstream: "{upstream.url}", audience: "{ORDERS}", token_issuers: [ci],
     allow: [{{clients: [billing]}}]}}
  - {{name: archive, path: /archive, upstream: "{upstream.url}", audience: "{ARCHIVE}", token_issuers: [ci],
     allow: [{{clients: [billing]}}]}}
  - {{name: corp-api, path: /corp, upstream: "{upstream.url}", audience: "{ORDERS}", allow: [{{clients: [billing]}}]}}
""")
    world = World(ci, public, upstream)
    from_ci = await ci.client_credentials(BILLING, ORDERS, ["orders.read"])
    from_corp = await sign_in.client_credentials(BILLING, ORDERS, ["orders.read"])
    assert (await world.call("/ci/x", from_ci))[0] == 200
    assert (await world.call("/ci/x", from_corp))[0] == 200  # its identity provider's tokens too
    assert (await world.call("/corp/x", from_corp))[0] == 200
    status, headers, _ = await world.call("/corp/x", from_ci)  # an issuer this route does not list
    assert status == 401 and 'error="invalid_token"' in headers["WWW-Authenticate"]
    # An opaque token of the token issuer, introspected with the proxy's client there.
    opaque = await ci.client_credentials(BILLING, ARCHIVE, ["orders.read"])
    assert (await world.call("/archive/x", opaque))[0] == 200


async def test_requests_denials_and_latency_are_labelled_with_the_caller(world: World) -> None:
    def scrape() -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        return {(sample.name, frozenset(sample.labels.items())): sample.value
                for family in text_string_to_metric_families(metrics.exposition().decode())
                for sample in family.samples}

    def delta(name: str, **labels: str) -> float:
        wanted = labels.items()
        return sum(value for (found, series), value in after.items() if found == name and wanted <= series) - sum(
            value for (found, series), value in before.items() if found == name and wanted <= series)

    before = scrape()
    billing = await world.idp.client_credentials(BILLING, ORDERS, ["orders.read"])
    reports = await world.idp.client_credentials(REPORTS, ORDERS, ["orders.read"])
    assert (await world.call("/orders/list", billing))[0] == 200
    assert (await world.call("/orders/list", reports))[0] == 403
    assert (await world.call("/orders/list"))[0] == 401
    after = scrape()
    assert delta("ztproxy_requests_total", route="orders", status="200", caller="service") == 1
    assert delta("ztproxy_request_duration_seconds_count", route="orders", decision="allow", caller="service") == 1
    assert delta("ztproxy_denials_total", route="orders", reason="client-not-allowed", caller="service") == 1
    assert delta("ztproxy_denials_total", route="orders", reason="service-required", caller="anonymous") == 1

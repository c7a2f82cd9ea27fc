"""What the app behind the proxy receives: a verifiable signed assertion and identity headers."""

from __future__ import annotations

import aiohttp
import jwt as pyjwt
import pytest
from yarl import URL

from tests.conftest import ProxyFactory, UpstreamFactory
from tests.integration.login_env import ROUTES, LoginWorld, echo_json, start_world
from tests.support.idp import ALICE_PASSWORD, IdpFactory
from tests.support.user_agent import UserAgent
from ztproxy.verify import AssertionInvalid, Verifier

ROUTES_WITH_CLAIMS = ROUTES + """
  - name: claims
    path: /claims
    upstream: {upstream}
    allow: [{{email_domains: [corp.example]}}]
    audience: urn:example:claims-app
    claim_headers: {{X-Employee-Email: email, X-Display-Name: name}}
"""


@pytest.fixture
async def world(start_idp: IdpFactory, start_proxy: ProxyFactory, start_upstream: UpstreamFactory) -> LoginWorld:
    return await start_world(start_idp, start_proxy, start_upstream, routes=ROUTES_WITH_CLAIMS)


def header(seen: dict[str, object], name: str) -> list[str]:
    headers = seen["headers"]
    assert isinstance(headers, list)
    return [value for key, value in headers if key.lower() == name.lower()]


async def test_the_app_gets_a_verifiable_assertion_and_identity_headers(world: LoginWorld) -> None:
    async with UserAgent() as agent:
        await world.login(agent, "/app/", "alice", ALICE_PASSWORD)
        # Spoofed identity headers from the client never reach the app.
        response = await agent.session.get(world.url + "/app/x", headers={
            "X-Ztproxy-User": "admin", "X_Ztproxy_Groups": "admins", "X-Ztproxy-Jwt-Assertion": "forged"})
        seen = await response.json()
    assert header(seen, "X-Ztproxy-User") == ["alice"]
    assert header(seen, "X-Ztproxy-Email") == ["alice@corp.example"]
    assert header(seen, "X-Ztproxy-Groups") == ["employees"]
    assert not header(seen, "X_Ztproxy_Groups")
    [token] = header(seen, "X-Ztproxy-Jwt-Assertion")
    verifier = Verifier(issuer=world.url, audience=world.url, jwks_url=world.url + "/.well-known/ztproxy/jwks.json")
    identity = await verifier.averify(token)
    assert identity.subject == "alice"
    claims = pyjwt.decode(token, options={"verify_signature": False})
    assert claims["route"] == "app" and claims["email"] == "alice@corp.example"
    assert claims["exp"] - claims["iat"] == 60 and claims["acr"] == world.idp.pwd_acr
    # The sid is a hash, never the session id the cookie carries.
    cookie = agent.cookie_jar.filter_cookies(URL(world.url))["ztproxy_session"].value
    assert claims["sid"] not in cookie


async def test_an_assertion_for_one_route_is_refused_by_another(world: LoginWorld) -> None:
    async with UserAgent() as agent:
        await world.login(agent, "/app/", "alice", ALICE_PASSWORD)
        seen = echo_json(await agent.get(world.url + "/claims/x"))
    [token] = header(seen, "X-Ztproxy-Jwt-Assertion")
    jwks_url = world.url + "/.well-known/ztproxy/jwks.json"
    assert (await Verifier(issuer=world.url, audience="urn:example:claims-app", jwks_url=jwks_url)
            .averify(token)).subject == "alice"
    with pytest.raises(AssertionInvalid):
        await Verifier(issuer=world.url, audience=world.url, jwks_url=jwks_url).averify(token)
    assert header(seen, "X-Employee-Email") == ["alice@corp.example"]
    assert header(seen, "X-Display-Name") == ["Alice Example"]


async def test_claim_headers_sent_by_the_client_are_removed(world: LoginWorld) -> None:
    async with UserAgent() as agent:
        await world.login(agent, "/app/", "alice", ALICE_PASSWORD)
        response = await agent.session.get(world.url + "/claims/x", headers={"X-Employee-Email": "ceo@corp.example"})
        seen = await response.json()
    assert header(seen, "X-Employee-Email") == ["alice@corp.example"]


async def test_anonymous_requests_carry_no_identity(world: LoginWorld) -> None:
    async with aiohttp.ClientSession() as client:
        async with client.get(world.url + "/public/x", headers={"X-Ztproxy-User": "admin"}) as response:
            seen = await response.json()
    assert not header(seen, "X-Ztproxy-User") and not header(seen, "X-Ztproxy-Jwt-Assertion")


async def test_jwks_is_public_keys_only_with_cache_validators(world: LoginWorld) -> None:
    async with aiohttp.ClientSession() as client:
        async with client.get(world.url + "/.well-known/ztproxy/jwks.json") as response:
            assert response.status == 200
            document = await response.json()
            etag = response.headers["ETag"]
            assert response.headers["Cache-Control"].startswith("public, max-age=")
        async with client.get(world.url + "/.well-known/ztproxy/jwks.json",
                              headers={"If-None-Match": etag}) as again:
            assert again.status == 304
    assert document["keys"] and all("d" not in key and key["alg"] == "ES256" for key in document["keys"])

"""The demo OpenID Provider does what ztproxy's tests and demo rely on.

A tiny relying party written here (aiohttp + joserfc, no ztproxy code) signs users in through
``tests.support.user_agent.UserAgent`` and checks the tokens, refresh, userinfo, logout and the
back-channel logout token the IdP sends.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlencode, urlsplit

import aiohttp
import pyotp
import pytest
from aiohttp import web
from joserfc import jwt
from joserfc.jwk import KeySet
from joserfc.jwt import JWTClaimsRegistry

from tests.conftest import UpstreamFactory
from tests.support.idp import ALICE_PASSWORD, BOB, BOB_PASSWORD, BOB_TOTP_SECRET, DEFAULT_USERS, IdpFactory
from tests.support.user_agent import UserAgent
from ztproxy.demo_idp import DEFAULT_MFA_ACR, DEFAULT_PWD_ACR, DemoIdp, IdpClient, IdpStartError, IdpUser

pytestmark = pytest.mark.integration

BACKCHANNEL_LOGOUT_EVENT = "http://schemas.openid.net/event/backchannel-logout"
# Extra claims are released; the ones the protocol decides cannot be set this way.
CAROL = IdpUser(username="carol", password="carol-demo-password", email="carol@corp.example", name="Carol",
                claims={"department": "finance", "acr": DEFAULT_MFA_ACR, "sub": "alice"})


@dataclass
class AuthRequest:
    url: str
    state: str
    nonce: str
    verifier: str


@dataclass
class TinyRp:
    """The least a confidential OIDC client does: code flow with PKCE, token checks, refresh."""

    idp: DemoIdp
    client: IdpClient
    origin: str  # where the redirect URIs and the back-channel logout endpoint live
    metadata: dict[str, Any]
    keys: KeySet
    logout_tokens: list[str] = field(default_factory=list)

    @property
    def redirect_uri(self) -> str:
        return self.client.redirect_uris[0]

    def authorization_request(self, **extra: str) -> AuthRequest:
        state, nonce, verifier = secrets.token_urlsafe(16), secrets.token_urlsafe(16), secrets.token_urlsafe(48)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        query = {"client_id": self.client.client_id, "response_type": "code", "redirect_uri": self.redirect_uri,
                 "scope": "openid email profile groups", "state": state, "nonce": nonce,
                 "code_challenge": challenge, "code_challenge_method": "S256", **extra}
        return AuthRequest(f"{self.metadata['authorization_endpoint']}?{urlencode(query)}", state, nonce, verifier)

    def code_from(self, callback_url: str, request: AuthRequest) -> str:
        params = {key: values[0] for key, values in parse_qs(urlsplit(callback_url).query).items()}
        assert params["state"] == request.state
        assert params["iss"] == self.idp.issuer  # RFC 9207
        return params["code"]

    async def token_request(self, form: dict[str, str], *, auth: str = "basic") -> tuple[int, dict[str, Any]]:
        data, headers = dict(form), {}
        if auth == "basic":
            # RFC 6749 2.3.1: form-urlencode the id and secret, then HTTP Basic.
            pair = f"{quote(self.client.client_id, safe='')}:{quote(self.client.client_secret, safe='')}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        else:
            data |= {"client_id": self.client.client_id, "client_secret": self.client.client_secret}
        async with aiohttp.ClientSession() as session:
            async with session.post(self.metadata["token_endpoint"], data=data, headers=headers) as response:
                return response.status, await response.json()

    async def exchange(self, callback_url: str, request: AuthRequest, *, auth: str = "basic") -> dict[str, Any]:
        status, body = await self.token_request(
            {"grant_type": "authorization_code", "code": self.code_from(callback_url, request),
             "redirect_uri": self.redirect_uri, "code_verifier": request.verifier}, auth=auth)
        assert status == 200, body
        return body

    async def sign_in(self, ua: UserAgent, username: str, password: str, totp_secret: str | None = None,
                      **extra: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """Sign in; return the token response and the verified ID token claims."""
        request = self.authorization_request(**extra)
        callback = await ua.login(request.url, username, password, totp_secret, stop_at=self.origin)
        assert callback.location is not None and callback.location.startswith(self.redirect_uri), callback.text
        tokens = await self.exchange(callback.location, request)
        return tokens, self.verify(tokens["id_token"], nonce=request.nonce)

    def verify(self, token: str, *, nonce: str | None = None) -> dict[str, Any]:
        decoded = jwt.decode(token, self.keys, algorithms=["RS256", "ES256"])
        registry = JWTClaimsRegistry(iss={"essential": True, "value": self.idp.issuer},
                                     aud={"essential": True, "value": self.client.client_id},
                                     sub={"essential": True})
        registry.validate(decoded.claims)
        if nonce is not None:
            assert decoded.claims["nonce"] == nonce
        return decoded.claims

    async def refresh(self, refresh_token: str) -> tuple[int, dict[str, Any]]:
        return await self.token_request({"grant_type": "refresh_token", "refresh_token": refresh_token})

    async def userinfo(self, access_token: str) -> tuple[int, dict[str, Any] | str]:
        headers = {"Authorization": f"Bearer {access_token}"}
        async with aiohttp.ClientSession() as session:
            async with session.get(self.metadata["userinfo_endpoint"], headers=headers) as response:
                if response.status == 200:
                    return 200, await response.json()
                return response.status, await response.text()


@pytest.fixture
async def rp(start_idp: IdpFactory, start_upstream: UpstreamFactory) -> TinyRp:
    """A relying party on a real loopback server (it receives back-channel logout) and its IdP."""
    logout_tokens: list[str] = []

    async def backchannel_logout(request: web.Request) -> web.Response:
        logout_tokens.append(str((await request.post())["logout_token"]))
        return web.Response(status=200)

    server = await start_upstream(routes=[web.post("/backchannel-logout", backchannel_logout)])
    client = IdpClient(client_id="tiny-rp", client_secret=secrets.token_urlsafe(24),
                       redirect_uris=(f"{server.url}/callback",),
                       post_logout_redirect_uris=(f"{server.url}/signed-out",),
                       backchannel_logout_uri=f"{server.url}/backchannel-logout")
    idp = await start_idp(clients=[client], users=(*DEFAULT_USERS, CAROL))
    return await _connect(idp, client, server.url, logout_tokens)


async def _connect(idp: DemoIdp, client: IdpClient, origin: str, logout_tokens: list[str]) -> TinyRp:
    async with aiohttp.ClientSession() as session:
        async with session.get(idp.discovery_url) as response:
            metadata = await response.json()
        async with session.get(metadata["jwks_uri"]) as response:
            keys = KeySet.import_key_set(await response.json())
    return TinyRp(idp=idp, client=client, origin=origin, metadata=metadata, keys=keys, logout_tokens=logout_tokens)


@pytest.fixture
async def ua() -> Any:
    async with UserAgent() as agent:
        yield agent


def wrong_code(secret: str) -> str:
    """A 6-digit code that is not valid now nor in the neighbouring time steps."""
    totp = pyotp.TOTP(secret)
    valid = {totp.at(time.time() + offset) for offset in (-60, -30, 0, 30, 60)}
    return next(code for code in (f"{n:06d}" for n in range(1000)) if code not in valid)


async def test_discovery_pkce_and_client_authentication(rp: TinyRp, ua: UserAgent) -> None:
    metadata = rp.metadata
    assert metadata["issuer"] == rp.idp.issuer
    assert metadata["response_types_supported"] == ["code"]
    assert metadata["code_challenge_methods_supported"] == ["S256"]
    assert metadata["acr_values_supported"] == [DEFAULT_PWD_ACR, DEFAULT_MFA_ACR]
    assert metadata["claims_parameter_supported"] is True
    assert metadata["backchannel_logout_supported"] is True
    assert metadata["backchannel_logout_session_supported"] is True
    assert metadata["authorization_response_iss_parameter_supported"] is True
    # client_credentials: the tokens the demo IdP issues to services (issue 15).
    assert set(metadata["grant_types_supported"]) == {"authorization_code", "refresh_token", "client_credentials"}
    assert {"client_secret_basic", "client_secret_post"} <= set(metadata["token_endpoint_auth_methods_supported"])
    for endpoint in ("end_session_endpoint", "userinfo_endpoint", "jwks_uri", "token_endpoint"):
        assert metadata[endpoint].startswith(rp.idp.issuer + "/")
    assert {"groups", "email", "profile"} <= set(metadata["scopes_supported"])
    assert any(key["kty"] == "RSA" and key["alg"] == "RS256" for key in rp.keys.as_dict()["keys"])

    # A request without code_challenge never gets a code (PKCE is required).
    no_pkce = rp.authorization_request()
    url = no_pkce.url.split("&code_challenge=")[0]
    refused = await ua.navigate(url, stop_at=rp.origin)
    assert refused.location is not None and "error=invalid_request" in refused.location
    assert "code=" not in refused.location
    # Without the verifier a code is refused (RFC 7636 4.6)...
    request = rp.authorization_request()
    callback = await ua.login(request.url, "alice", ALICE_PASSWORD, stop_at=rp.origin)
    assert callback.location is not None
    code = rp.code_from(callback.location, request)
    status, body = await rp.token_request({"grant_type": "authorization_code", "code": code,
                                           "redirect_uri": rp.redirect_uri}, auth="post")
    assert status == 400 and body["error"] == "invalid_grant"
    # ...and with it (a fresh code: the OP session signs in without a page), client_secret_post works.
    request = rp.authorization_request()
    callback = await ua.navigate(request.url, stop_at=rp.origin)
    assert callback.location is not None
    tokens = await rp.exchange(callback.location, request, auth="post")
    assert rp.verify(tokens["id_token"], nonce=request.nonce)["sub"] == "alice"


async def test_password_login_gives_tokens_with_pwd_acr(rp: TinyRp, ua: UserAgent) -> None:
    request = rp.authorization_request(login_hint="<script>alert(1)</script>")
    page = await ua.navigate(request.url, stop_at=rp.origin)
    assert "<script>alert(1)</script>" not in page.text and "&#60;script&#62;" in page.text
    form = page.form("password")
    assert page.status == 200 and form is not None
    for username, password in (("alice", "not-her-password"), ("mallory", "x"), ("", "")):
        refused = await ua.submit(form, {"username": username, "password": password}, stop_at=rp.origin)
        assert refused.status == 200 and refused.form("password") is not None
        assert "Wrong username or password" in refused.text
    # The same attempt still works with the right password.
    before = int(time.time())
    callback = await ua.submit(form, {"username": "alice", "password": ALICE_PASSWORD}, stop_at=rp.origin)
    assert callback.location is not None
    tokens = await rp.exchange(callback.location, request)
    claims = rp.verify(tokens["id_token"], nonce=request.nonce)
    assert claims["sub"] == "alice"
    assert claims["acr"] == DEFAULT_PWD_ACR
    assert claims["amr"] == ["pwd"]
    assert before - 5 <= claims["auth_time"] <= int(time.time()) + 5
    assert claims["sid"]
    assert claims["email"] == "alice@corp.example"
    assert claims["groups"] == ["employees"]
    assert tokens["refresh_token"]  # without asking for offline_access
    # Nothing asked for consent: the only pages were the login form's.
    assert [r.form("password") is not None for r in ua.history if r.status == 200] == [True] * 4
    status, userinfo = await rp.userinfo(tokens["access_token"])
    assert status == 200 and userinfo == {"sub": "alice", "email": "alice@corp.example", "email_verified": True,
                                          "name": "Alice Example", "groups": ["employees"]}

    async with UserAgent() as carol_agent:
        tokens, claims = await rp.sign_in(carol_agent, "carol", CAROL.password)
    assert claims["department"] == "finance" and claims["acr"] == DEFAULT_PWD_ACR and claims["sub"] == "carol"
    status, userinfo = await rp.userinfo(tokens["access_token"])
    assert status == 200 and isinstance(userinfo, dict)
    assert userinfo["department"] == "finance" and userinfo["sub"] == "carol" and "acr" not in userinfo


async def test_mfa_request_makes_bob_enter_a_totp_code(rp: TinyRp, ua: UserAgent) -> None:
    mfa = {"acr_values": DEFAULT_MFA_ACR}
    page = await ua.login(rp.authorization_request(**mfa).url, "bob", BOB_PASSWORD, stop_at=rp.origin)
    for _ in range(5):  # wrong codes are refused, and five of them end the attempt
        form = page.form("code")
        assert page.status == 200 and form is not None
        page = await ua.submit(form, {"code": wrong_code(BOB_TOTP_SECRET)}, stop_at=rp.origin)
        assert page.location is not None or "Wrong code" in page.text
    assert page.location is not None and "error=access_denied" in page.location and "code=" not in page.location

    _, claims = await rp.sign_in(ua, "bob", BOB_PASSWORD, BOB_TOTP_SECRET, **mfa)
    assert claims["acr"] == DEFAULT_MFA_ACR
    assert claims["amr"] == ["pwd", "otp"]
    assert claims["groups"] == ["employees", "payroll"]
    # Alice has no second factor: she signs in with her password and the client sees pwd.
    async with UserAgent() as alice_agent:
        _, claims = await rp.sign_in(alice_agent, "alice", ALICE_PASSWORD, **mfa)
    assert claims["acr"] == DEFAULT_PWD_ACR and claims["amr"] == ["pwd"]


async def test_step_up_through_an_essential_acr_claim_asks_only_the_code(rp: TinyRp, ua: UserAgent) -> None:
    _, claims = await rp.sign_in(ua, "bob", BOB_PASSWORD)
    assert claims["acr"] == DEFAULT_PWD_ACR
    essential_mfa = json.dumps({"id_token": {"acr": {"essential": True, "values": [DEFAULT_MFA_ACR]}}})
    page = await ua.navigate(rp.authorization_request(claims=essential_mfa).url, stop_at=rp.origin)
    assert page.form("password") is None and page.form("code") is not None
    _, claims = await rp.sign_in(ua, "bob", BOB_PASSWORD, BOB_TOTP_SECRET, claims=essential_mfa)
    assert claims["acr"] == DEFAULT_MFA_ACR and claims["amr"] == ["pwd", "otp"]


async def test_prompt_login_and_max_age_ask_for_the_password_again(rp: TinyRp, ua: UserAgent) -> None:
    await rp.sign_in(ua, "alice", ALICE_PASSWORD)
    silent = await ua.navigate(rp.authorization_request().url, stop_at=rp.origin)
    assert silent.location is not None and "code=" in silent.location  # the OP session signs in silently
    for extra in ({"prompt": "login"}, {"max_age": "0"}):
        page = await ua.navigate(rp.authorization_request(**extra).url, stop_at=rp.origin)
        assert page.form("password") is not None, extra
        _, claims = await rp.sign_in(ua, "alice", ALICE_PASSWORD, **extra)
        assert claims["auth_time"] >= int(time.time()) - 5


async def test_refresh_reflects_group_changes_and_disabled_users_are_refused(rp: TinyRp, ua: UserAgent) -> None:
    tokens, _ = await rp.sign_in(ua, "alice", ALICE_PASSWORD)
    rp.idp.update_user("alice", groups=("employees", "payroll-admin"))
    status, refreshed = await rp.refresh(tokens["refresh_token"])
    assert status == 200, refreshed
    assert refreshed["refresh_token"] == tokens["refresh_token"]  # no rotation
    assert rp.verify(refreshed["id_token"])["groups"] == ["employees", "payroll-admin"]
    status, userinfo = await rp.userinfo(refreshed["access_token"])
    assert status == 200 and isinstance(userinfo, dict) and userinfo["groups"] == ["employees", "payroll-admin"]

    rp.idp.update_user("alice", disabled=True)
    status, body = await rp.refresh(tokens["refresh_token"])
    assert status == 400 and body["error"] == "invalid_grant"
    status, _ = await rp.userinfo(refreshed["access_token"])
    assert status == 401
    # Her OP session no longer signs her in, and she cannot sign in again.
    page = await ua.login(rp.authorization_request().url, "alice", ALICE_PASSWORD, stop_at=rp.origin)
    assert page.status == 200 and page.form("password") is not None and "Wrong username" in page.text


async def test_logout_reaches_the_client_through_the_back_channel(rp: TinyRp, ua: UserAgent) -> None:
    # RP-initiated logout: confirm, back to the registered post_logout_redirect_uri, logout token.
    tokens, claims = await rp.sign_in(ua, "alice", ALICE_PASSWORD)
    signed_out = rp.client.post_logout_redirect_uris[0]
    query = urlencode({"id_token_hint": tokens["id_token"], "post_logout_redirect_uri": signed_out, "state": "s1"})
    confirm = await ua.navigate(f"{rp.metadata['end_session_endpoint']}?{query}", stop_at=rp.origin)
    form = confirm.form()
    assert confirm.status == 200 and form is not None
    done = await ua.submit(form, button="logout", stop_at=rp.origin)
    assert done.location == f"{signed_out}?state=s1"
    assert rp.verify(rp.logout_tokens.pop())["sid"] == claims["sid"]
    bad = urlencode({"id_token_hint": tokens["id_token"], "post_logout_redirect_uri": "http://127.0.0.1:1/evil"})
    refused = await ua.navigate(f"{rp.metadata['end_session_endpoint']}?{bad}", stop_at=rp.origin)
    assert refused.status == 400 and refused.location is None

    # end_sessions: the OP ends bob's session and POSTs a logout token to the client.
    tokens, claims = await rp.sign_in(ua, "bob", BOB_PASSWORD)
    deliveries = await rp.idp.end_sessions("bob")
    assert [(d.client_id, d.sid, d.delivered) for d in deliveries] == [("tiny-rp", claims["sid"], True)]
    [logout_token] = rp.logout_tokens
    assert jwt.decode(logout_token, rp.keys, algorithms=["RS256"]).header["typ"] == "logout+jwt"
    logout = rp.verify(logout_token)
    assert logout["sub"] == "bob" and logout["sid"] == claims["sid"]
    assert logout["events"] == {BACKCHANNEL_LOGOUT_EVENT: {}}
    assert "nonce" not in logout and logout["jti"] and logout["iat"]  # OIDC Back-Channel Logout 2.4
    status, body = await rp.refresh(tokens["refresh_token"])
    assert status == 400 and body["error"] == "invalid_grant"
    page = await ua.navigate(rp.authorization_request().url, stop_at=rp.origin)
    assert page.form("password") is not None
    assert await rp.idp.end_sessions("nobody") == ()

    # The control endpoint is closed without the launcher's token.
    async with aiohttp.ClientSession() as session:
        for headers in ({}, {"Authorization": "Bearer not-the-token"}):
            async with session.post(f"{rp.idp.issuer}/-/control/logout", json={"username": "alice"},
                                    headers=headers) as response:
                assert response.status == 401


async def test_restart_on_the_same_port_keeps_the_keys(rp: TinyRp, ua: UserAgent) -> None:
    tokens, _ = await rp.sign_in(ua, "alice", ALICE_PASSWORD)
    await rp.idp.stop()
    await rp.idp.stop()  # idempotent
    await rp.idp.start()
    again = await _connect(rp.idp, rp.client, rp.origin, rp.logout_tokens)
    assert again.keys.as_dict() == rp.keys.as_dict()
    assert again.verify(tokens["id_token"])["sub"] == "alice"


async def test_start_errors_are_clear(tmp_path: Path) -> None:
    client = IdpClient(client_id="c", client_secret="s", redirect_uris=("http://127.0.0.1:1/cb",))
    with pytest.raises(IdpStartError, match="not found on PATH"):
        await DemoIdp(workdir=tmp_path / "a", port=1, clients=[client], users=[BOB], node="no-such-node").start()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        idp = DemoIdp(workdir=tmp_path / "b", port=port, clients=[client], users=[BOB])
        with pytest.raises(IdpStartError, match="cannot listen"):
            await idp.start()
        assert idp.pid is None
    with pytest.raises(ValueError, match="loopback"):
        DemoIdp(workdir=tmp_path / "c", port=1, clients=[client], users=[BOB], host="0.0.0.0")

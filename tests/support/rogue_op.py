"""A rogue OpenID Provider the tests control: it answers the login with tokens broken on purpose.

It speaks the protocol just far enough for ztproxy's login (discovery, JWKS, authorize,
token, userinfo) and signs with its own real key, so a ``mode`` can break exactly one
thing: the signature, the audience, the nonce, the algorithm...
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import orjson
from aiohttp import web
from joserfc import jwt
from joserfc.jwk import KeySet, OctKey, RSAKey
from yarl import URL

MODES = ("valid", "forged-signature", "expired", "wrong-audience", "wrong-nonce", "alg-none", "hs256-client-secret",
         "wrong-issuer", "iss-parameter-mismatch", "userinfo-other-subject", "no-id-token", "future-iat")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class RogueOp:
    client_secret: str
    mode: str = "valid"
    issuer: str = ""
    key: RSAKey = field(default_factory=lambda: RSAKey.generate_key(2048, parameters={"kid": "op-key"}))
    other_key: RSAKey = field(default_factory=lambda: RSAKey.generate_key(2048, parameters={"kid": "op-key"}))
    nonces: dict[str, str] = field(default_factory=dict)  # code -> nonce of its authorization request
    published: list[RSAKey] | None = None  # the JWKS; default: the signing key
    jwks_fetches: int = 0
    sid: str | None = None  # the IdP session the ID tokens name (front- and back-channel logout)
    mtls_token_endpoint: str | None = None  # published as mtls_endpoint_aliases (RFC 8705 5)
    # Each token request: its form, and the subject CN of the client certificate it came with.
    token_requests: list[dict[str, Any]] = field(default_factory=list)
    id_token_claims: dict[str, Any] = field(default_factory=dict)  # more claims (hd, _claim_names...)
    refresh_tokens: bool = False  # issue refresh tokens, and redeem them for new access tokens
    authorize_queries: list[dict[str, str]] = field(default_factory=list)

    def app(self) -> web.Application:
        prefix = URL(self.issuer).path.rstrip("/")  # an issuer with a path serves below it
        app = web.Application()
        app.router.add_get(f"{prefix}/.well-known/openid-configuration", self.discovery)
        app.router.add_get(f"{prefix}/jwks", self.jwks)
        app.router.add_get(f"{prefix}/authorize", self.authorize)
        app.router.add_post(f"{prefix}/token", self.token)
        app.router.add_get(f"{prefix}/userinfo", self.userinfo)
        return app

    async def discovery(self, request: web.Request) -> web.Response:
        return web.json_response({
            "issuer": self.issuer, "authorization_endpoint": f"{self.issuer}/authorize",
            "token_endpoint": f"{self.issuer}/token", "userinfo_endpoint": f"{self.issuer}/userinfo",
            "jwks_uri": f"{self.issuer}/jwks", "response_types_supported": ["code"],
            "subject_types_supported": ["public"], "id_token_signing_alg_values_supported": ["RS256"],
            "code_challenge_methods_supported": ["S256"], "claims_parameter_supported": True,
            "authorization_response_iss_parameter_supported": True,
            **({} if self.mtls_token_endpoint is None
               else {"mtls_endpoint_aliases": {"token_endpoint": self.mtls_token_endpoint}}),
        })

    async def jwks(self, request: web.Request) -> web.Response:
        self.jwks_fetches += 1
        keys = [self.key] if self.published is None else self.published
        return web.json_response(KeySet(list(keys)).as_dict(private=False))

    async def authorize(self, request: web.Request) -> web.Response:
        query = request.query
        self.authorize_queries.append(dict(query))
        code = _b64(time.time_ns().to_bytes(8, "big"))
        self.nonces[code] = query["nonce"]
        issuer = "https://attacker.example" if self.mode == "iss-parameter-mismatch" else self.issuer
        params = urlencode({"code": code, "state": query["state"], "iss": issuer})
        raise web.HTTPFound(f"{query['redirect_uri']}?{params}")

    async def token(self, request: web.Request) -> web.Response:
        form = await request.post()
        peer = request.transport.get_extra_info("peercert") if request.transport is not None else None
        subject = dict(item for rdn in peer.get("subject", ()) for item in rdn) if peer else {}
        self.token_requests.append({"form": dict(form), "client_cn": subject.get("commonName"),
                                    "authorization": request.headers.get("Authorization")})
        if form.get("grant_type") == "refresh_token":
            if not self.refresh_tokens:
                return web.json_response({"error": "invalid_grant"}, status=400)
            count = len(self.token_requests)
            return web.json_response({"access_token": f"at-refresh-{count}", "token_type": "Bearer",
                                      "expires_in": 300, "refresh_token": f"rt-{count}"})
        nonce = self.nonces.pop(str(form["code"]), "")
        answer: dict[str, Any] = {"access_token": "at-" + str(form["code"]), "token_type": "Bearer",
                                  "expires_in": 300}
        if self.refresh_tokens:
            answer["refresh_token"] = "rt-" + str(form["code"])
        if self.mode != "no-id-token":
            answer["id_token"] = self.id_token(nonce)
        return web.json_response(answer)

    async def userinfo(self, request: web.Request) -> web.Response:
        subject = "someone-else" if self.mode == "userinfo-other-subject" else "mallory"
        return web.json_response({"sub": subject, "email": "mallory@corp.example"})

    def id_token(self, nonce: str) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {"iss": self.issuer, "sub": "mallory", "aud": "ztproxy", "iat": now,
                                  "exp": now + 300, "auth_time": now, "nonce": nonce,
                                  "email": "mallory@corp.example"}
        if self.sid is not None:
            claims["sid"] = self.sid
        claims.update(self.id_token_claims)
        mode = self.mode
        if mode == "expired":
            claims.update(iat=now - 4000, exp=now - 3600, auth_time=now - 4000)
        elif mode == "wrong-audience":
            claims["aud"] = "some-other-client"
        elif mode == "wrong-nonce":
            claims["nonce"] = "not-the-nonce-we-were-sent"
        elif mode == "wrong-issuer":
            claims["iss"] = "https://attacker.example"
        elif mode == "future-iat":
            claims.update(iat=now + 3600, exp=now + 7200)
        if mode == "alg-none":
            header = _b64(orjson.dumps({"alg": "none", "typ": "JWT"}))
            return f"{header}.{_b64(orjson.dumps(claims))}."
        if mode == "hs256-client-secret":
            return jwt.encode({"alg": "HS256"}, claims, OctKey.import_key(self.client_secret.encode()),
                              algorithms=["HS256"])
        key = self.other_key if mode == "forged-signature" else self.key
        return jwt.encode({"alg": "RS256", "kid": self.key.kid}, claims, key)


async def start_rogue_world(op: RogueOp, start_proxy: Any, start_upstream: Any, *, provider: str = "",
                            issuer_path: str = "", sessions: str = "") -> tuple[RogueOp, Any, web.AppRunner]:
    """``op`` served on a free port, and ztproxy signing in with it in front of a fresh upstream.

    ``provider``: more keys of the identity provider, as YAML flow entries (``, key: value``);
    ``issuer_path``: a path the issuer ends with (``/{tenant}/v2.0``); ``sessions``: the
    ``sessions`` section as a YAML flow mapping (``{refresh_interval: 1s}``).
    Returns the OP, the proxy (``tests.conftest.Proxy``) and the OP's runner, which the test cleans up.
    """
    from tests.conftest import free_port

    upstream = await start_upstream()
    op_port = free_port()
    op.issuer = f"http://127.0.0.1:{op_port}{issuer_path}"
    runner = web.AppRunner(op.app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", op_port).start()
    proxy = await start_proxy(f"""
server: {{listen: 127.0.0.1:{free_port()}, admin_listen: null}}
identity_providers:
  - {{name: corp, issuer: '{op.issuer}', client_id: ztproxy, client_secret: {op.client_secret}{provider}}}
{f"sessions: {sessions}" if sessions else ""}
routes:
  - {{name: app, upstream: '{upstream.url}', allow: [{{email_domains: [corp.example]}}]}}
""")
    return op, proxy, runner

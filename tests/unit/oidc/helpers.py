"""A good identity provider's keys, a rogue issuer's keys, and tokens built from them for the tests.

Tokens are signed with joserfc; the ones joserfc refuses to make (``alg: none``, HMAC keyed with
a public key, unknown critical headers) are assembled by hand here: they are test data.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import warnings
from collections.abc import Callable
from typing import Any

import pytest
from joserfc import jws, jwt
from joserfc.errors import SecurityWarning
from joserfc.jwk import ECKey, Key, KeySet, OKPKey, RSAKey
from joserfc.registry import HeaderParameter

from ztproxy.oidc.tokens import (
    BACKCHANNEL_LOGOUT_EVENT,
    IdTokenClaims,
    LogoutTokenClaims,
    TokenInvalid,
    validate_id_token,
    validate_logout_token,
)

NOW = 1_700_000_000.0
LEEWAY = 30.0
ISSUER = "https://idp.corp.example"
CLIENT_ID = "ztproxy"
CLIENT_SECRET = "client-secret-known-to-the-proxy-and-the-idp"
NONCE = "n-0S6_WzA2Mj"
ALGORITHMS = ("RS256", "PS256", "ES256", "EdDSA")

# The provider's signing keys (private, to mint tokens) and the JWKS the proxy would fetch.
GOOD_RSA = RSAKey.generate_key(2048, parameters={"kid": "rsa-1"})
GOOD_RSA_2 = RSAKey.generate_key(2048, parameters={"kid": "rsa-2"})
GOOD_EC = ECKey.generate_key("P-256", parameters={"kid": "ec-1"})
GOOD_ED = OKPKey.generate_key("Ed25519", parameters={"kid": "ed-1"})
GOOD_KEYS = KeySet.import_key_set({"keys": [key.as_dict(private=False)
                                            for key in (GOOD_RSA, GOOD_RSA_2, GOOD_EC, GOOD_ED)]})
# A rogue issuer: its own keys, reusing the provider's key ids.
ROGUE_RSA = RSAKey.generate_key(2048, parameters={"kid": "rsa-1"})
ROGUE_EC = ECKey.generate_key("P-256", parameters={"kid": "ec-1"})

# What the proxy knows about its provider, as validate_id_token / validate_logout_token take it.
PROVIDER: dict[str, Any] = {"keys": GOOD_KEYS, "issuer": ISSUER, "client_id": CLIENT_ID, "algorithms": ALGORITHMS,
                            "now": NOW, "leeway": LEEWAY}

_PERMISSIVE = jws.JWSRegistry(header_registry={"x-ext": HeaderParameter("test extension", "str"),
                                              "exp": HeaderParameter("test extension", "int")},
                              algorithms=["RS256", "PS256", "ES256", "ES384", "EdDSA", "HS256"],
                              strict_check_header=False)


def keys_of(*keys: Key) -> KeySet:
    return KeySet.import_key_set({"keys": [key.as_dict(private=False) for key in keys]})


def id_claims(**changes: Any) -> dict[str, Any]:
    """A good ID token's claims; a change to None removes the claim."""
    claims: dict[str, Any] = {
        "iss": ISSUER, "sub": "248289761001", "aud": CLIENT_ID, "exp": NOW + 300, "iat": NOW - 5,
        "auth_time": NOW - 60, "nonce": NONCE, "acr": "urn:corp:mfa", "amr": ["pwd", "otp"],
        "sid": "08a5019c-17e1", "email": "ada@corp.example", "email_verified": True, "name": "Ada",
        "groups": ["staff"],
    }
    return _apply(claims, changes)


def logout_claims(**changes: Any) -> dict[str, Any]:
    """A good logout token's claims (Back-Channel Logout 2.4); a change to None removes the claim."""
    claims: dict[str, Any] = {
        "iss": ISSUER, "aud": CLIENT_ID, "iat": NOW - 5, "exp": NOW + 115, "jti": "bWJq", "sub": "248289761001",
        "sid": "08a5019c-17e1", "events": {BACKCHANNEL_LOGOUT_EVENT: {}},
    }
    return _apply(claims, changes)


def _apply(claims: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    for name, value in changes.items():
        if value is None:
            claims.pop(name, None)
        else:
            claims[name] = value
    return claims


def sign(claims: dict[str, Any], key: Key = GOOD_RSA, alg: str = "RS256", **header: Any) -> str:
    """A compact JWS; header values of None are left out (``kid=None``: no kid)."""
    fields = {"alg": alg, "kid": key.kid} | header
    fields = {name: value for name, value in fields.items() if value is not None}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SecurityWarning)  # joserfc warns that "EdDSA" is deprecated
        return jwt.encode(fields, claims, key, registry=_PERMISSIVE, default_type=None)


def sign_payload(payload: bytes, key: Key = GOOD_RSA, alg: str = "RS256") -> str:
    """A compact JWS over arbitrary bytes (for payloads that are not a JSON object)."""
    return jws.serialize_compact({"alg": alg, "kid": key.kid}, payload, key, registry=_PERMISSIVE)


def b64(data: bytes | dict[str, Any]) -> str:
    raw = json.dumps(data).encode() if isinstance(data, dict) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def unsigned(claims: dict[str, Any], alg: str = "none") -> str:
    """The unsecured JWS of RFC 7515 A.5: an empty signature."""
    return f"{b64({'alg': alg})}.{b64(claims)}."


def hmac_signed(claims: dict[str, Any], secret: bytes, **header: Any) -> str:
    """HS256 keyed with any bytes, e.g. an RSA public key in PEM (RS/HS confusion)."""
    signing_input = f"{b64({'alg': 'HS256', **header})}.{b64(claims)}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def with_header(token: str, **header: Any) -> str:
    """The token with its header replaced, signature unchanged (so it no longer verifies)."""
    _, payload, signature = token.split(".")
    return f"{b64(header)}.{payload}.{signature}"


def check_id_token(token: str, **options: Any) -> IdTokenClaims:
    return validate_id_token(token, **(PROVIDER | {"nonce": NONCE} | options))


def check_logout_token(token: str, **options: Any) -> LogoutTokenClaims:
    return validate_logout_token(token, **(PROVIDER | options))


def refusal(check: Callable[..., object], token: str, **options: Any) -> str:
    """The reason ``check`` refuses the token with (the test fails if it is accepted)."""
    with pytest.raises(TokenInvalid) as caught:
        check(token, **options)
    return caught.value.reason

"""DPoP proofs (RFC 9449 4.3): what a proof must be, and every way one is refused."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, OctKey, RSAKey

from ztproxy.oidc.dpop import access_token_hash, dpop_nonces, validate_dpop_proof
from ztproxy.oidc.tokens import TokenInvalid

URL = "https://orders.corp.example/orders/a"
TOKEN = "an-access-token"
NOW = time.time()


def proof(key: Any = None, *, alg: str = "ES256", header: dict[str, Any] | None = None, **claims: Any) -> str:
    key = key or ECKey.generate_key("P-256")
    body = {"jti": "j-1", "htm": "GET", "htu": URL, "iat": int(NOW), "ath": access_token_hash(TOKEN), **claims}
    head = {"typ": "dpop+jwt", "alg": alg, "jwk": key.as_dict(private=False), **(header or {})}
    return jwt.encode(head, {k: v for k, v in body.items() if v is not None}, key, algorithms=[alg])


def check(value: str, **options: Any) -> Any:
    arguments = {"method": "GET", "url": URL, "access_token": TOKEN, "now": NOW, "max_age": 60.0, "leeway": 5.0,
                 **options}
    return validate_dpop_proof(value, **arguments)


def test_a_good_proof_names_its_key() -> None:
    key = ECKey.generate_key("P-256")
    verified = check(proof(key))
    assert verified.jkt == key.thumbprint() and verified.jti == "j-1"
    # The URL compares without its query, scheme and host case-insensitively.
    assert check(proof(key, htu="HTTPS://Orders.Corp.Example/orders/a"), url=URL + "?x=1").jti == "j-1"
    assert check(proof(RSAKey.generate_key(2048), alg="PS256")).jti == "j-1"


def _unsigned(value: str) -> str:
    head, payload, _ = value.split(".")
    header = json.loads(base64.urlsafe_b64decode(head + "=="))
    header["alg"] = "none"
    return base64.urlsafe_b64encode(json.dumps(header).encode()).rstrip(b"=").decode() + f".{payload}."


@pytest.mark.parametrize(("name", "make"), [
    ("typ", lambda: proof(header={"typ": "JWT"})),
    ("alg none", lambda: _unsigned(proof())),
    ("HS256", lambda: jwt.encode({"typ": "dpop+jwt", "alg": "HS256", "jwk": {"kty": "oct", "k": "c2VjcmV0"}},
                                 {"jti": "j", "htm": "GET", "htu": URL, "iat": int(NOW)},
                                 OctKey.import_key(b"secret-secret-secret-secret-1234"), algorithms=["HS256"])),
    ("a private key in the header", lambda: proof(header={"jwk": ECKey.generate_key("P-256").as_dict(private=True)})),
    ("a key that did not sign it", lambda: proof(header={"jwk": ECKey.generate_key("P-256").as_dict(private=False)})),
    ("no jti", lambda: proof(jti=None)),
    ("another method", lambda: proof(htm="POST")),
    ("another URL", lambda: proof(htu="https://orders.corp.example/other")),
    ("too old", lambda: proof(iat=int(NOW) - 120)),
    ("from the future", lambda: proof(iat=int(NOW) + 60)),
    ("another token", lambda: proof(ath=access_token_hash("another"))),
    ("no token hash", lambda: proof(ath=None)),
    ("not a JWT", lambda: "not.a.jwt"),
])
def test_a_bad_proof_is_refused(name: str, make: Any) -> None:
    with pytest.raises(TokenInvalid) as refused:
        check(make())
    assert refused.value.reason == "dpop", name


def test_nonces_are_asked_for_and_accepted_for_two_windows() -> None:
    current, previous = dpop_nonces(b"secret", NOW)
    assert dpop_nonces(b"secret", NOW) == (current, previous) and dpop_nonces(b"other", NOW)[0] != current
    with pytest.raises(TokenInvalid) as refused:
        check(proof(), nonces=(current, previous))
    assert refused.value.reason == "dpop-nonce"
    assert check(proof(nonce=previous), nonces=(current, previous)).jti == "j-1"

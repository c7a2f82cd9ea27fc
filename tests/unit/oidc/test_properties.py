"""Whatever comes in, token validation answers with a result or a TokenInvalid, never another error."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.oidc.helpers import (
    GOOD_EC,
    NONCE,
    PROVIDER,
    b64,
    id_claims,
    logout_claims,
    sign,
)
from ztproxy.oidc.tokens import IdTokenClaims, LogoutTokenClaims, TokenInvalid, validate_id_token, validate_logout_token

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
claim_names = st.sampled_from(["iss", "sub", "aud", "azp", "exp", "iat", "nbf", "auth_time", "nonce", "acr",
                               "amr", "sid", "jti", "at_hash", "email", "email_verified", "name", "events"])
# Mostly an accepted alg, so that the checks after it (crit, kid, key choice, typ) are reached too.
headers = st.fixed_dictionaries(
    {"alg": st.sampled_from(["RS256", "ES256", "EdDSA", "none", "HS256"]) | json_values},
    optional={name: json_values | st.sampled_from(["rsa-1", "ec-1", "JWT", "logout+jwt"])
              for name in ("kid", "typ", "crit", "b64", "jku", "jwk", "x5c", "cty", "zip", "enc")},
)
segment = st.text(alphabet="ABCDEFabcdef0123456789-_=+/.", max_size=40)


def _outcome(token: str) -> None:
    login: dict[str, Any] = {"nonce": NONCE, "max_age": 600.0, "access_token": "at"}
    checks: list[Callable[[], object]] = [lambda: validate_id_token(token, **PROVIDER, **login),
                                          lambda: validate_logout_token(token, **PROVIDER)]
    for validate in checks:
        try:
            result = validate()
        except TokenInvalid:
            continue
        assert isinstance(result, IdTokenClaims | LogoutTokenClaims)


@settings(max_examples=300)
@given(st.text(max_size=300))
def test_any_string_gives_a_token_invalid(token: str) -> None:
    _outcome(token)


@settings(max_examples=300)
@given(st.lists(segment, min_size=1, max_size=6))
def test_any_dotted_segments_give_a_token_invalid(parts: list[str]) -> None:
    _outcome(".".join(parts))


@settings(max_examples=150)
@given(headers, st.dictionaries(claim_names, json_values))
def test_any_header_gives_a_token_invalid(header: dict[str, Any], claims: dict[str, Any]) -> None:
    _outcome(f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}.c2ln")


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(claim_names, json_values, max_size=4), st.booleans())
def test_signed_tokens_with_any_claim_values_give_a_result_or_a_token_invalid(changes: dict[str, Any],
                                                                              logout: bool) -> None:
    base = logout_claims() if logout else id_claims()
    _outcome(sign(base | changes, GOOD_EC, "ES256"))

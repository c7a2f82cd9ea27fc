"""Checking the access tokens services call with: JWTs (RFC 9068) and introspection answers (RFC 7662).

Pure functions: the keys, the introspection answer and the clock come in as arguments. Every
refusal is a :class:`~ztproxy.oidc.tokens.TokenInvalid` (``expired`` is told apart: the caller
only needs a new token); a token whose ``kid`` the key set lacks is an
:class:`~ztproxy.oidc.tokens.UnknownSigningKey`, so the caller can refetch the keys.

This module imports no aiohttp.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from ztproxy.oidc.tokens import TokenInvalid, check_registered_claims, check_types, token_type, verify_signature

_AT_JWT = "at+jwt"  # RFC 9068 2.1: the typ header of a JWT access token
_MAX_SCOPES = 256


@dataclass(frozen=True, slots=True)
class AccessToken:
    """What a verified access token says about its caller."""

    issuer: str
    client_id: str
    subject: str | None
    scopes: frozenset[str]
    expires: float | None  # seconds since the epoch; None: the introspection answer gave none
    token_id: str | None  # jti
    confirmation: Mapping[str, Any] | None  # cnf (RFC 7800): what the sender must prove


def _scopes(value: object) -> frozenset[str]:
    # RFC 9068 2.2.3 / RFC 7662 2.2: a space-separated string.
    if value is None:
        return frozenset()
    if not isinstance(value, str):
        raise TokenInvalid("malformed", "claim 'scope' is not a string")
    scopes = frozenset(value.split())
    if len(scopes) > _MAX_SCOPES:
        raise TokenInvalid("malformed", "too many scopes")
    return scopes


def _confirmation(value: object) -> Mapping[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise TokenInvalid("malformed", "claim 'cnf' is not an object")
    return value


def _client_id(claims: Mapping[str, Any]) -> str:
    client_id = claims.get("client_id")
    if not isinstance(client_id, str) or not client_id:
        raise TokenInvalid("client", "the token names no client_id")  # RFC 9068 2.2: required
    return client_id


def validate_access_token(token: str, *, keys: KeySet, issuer: str, audience: str, algorithms: Sequence[str],
                          now: float, leeway: float) -> AccessToken:
    """A JWT access token for ``audience`` from ``issuer`` (RFC 9068 4), or TokenInvalid."""
    header, claims = verify_signature(token, keys, algorithms)
    # RFC 9068 4: the typ header must say at+jwt, so that no other JWT of the issuer (an ID token,
    # a logout token) passes for an access token.
    if token_type(header) != _AT_JWT:
        raise TokenInvalid("type", f"typ is {header.get('typ')!r}, not at+jwt")
    check_types(claims)
    check_registered_claims(claims, issuer=issuer, audience=audience, now=now, leeway=leeway,
                            essential=("exp", "iat", "sub"))
    return AccessToken(issuer=issuer, client_id=_client_id(claims), subject=claims.get("sub"),
                       scopes=_scopes(claims.get("scope")), expires=float(claims["exp"]), token_id=claims.get("jti"),
                       confirmation=_confirmation(claims.get("cnf")))


def from_introspection(answer: Mapping[str, Any], *, issuer: str, audience: str, now: float,
                       leeway: float) -> AccessToken:
    """The token an introspection endpoint vouched for (RFC 7662 2.2), or TokenInvalid."""
    if answer.get("active") is not True:
        raise TokenInvalid("inactive", "the issuer says the token is not active")
    if answer.get("iss") is not None and answer["iss"] != issuer:
        raise TokenInvalid("issuer", "the introspection answer names another issuer")
    token_use = answer.get("token_type")
    if token_use is not None and not (isinstance(token_use, str) and token_use.lower() in ("bearer", "dpop")):
        raise TokenInvalid("type", f"token_type is {token_use!r}, not an access token")
    # The audience must be named: a token without one could be meant for any resource.
    aud = answer.get("aud")
    audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    if audience not in audiences:
        raise TokenInvalid("audience", "the token is not for this application")
    expires = answer.get("exp")
    if expires is not None:
        if not isinstance(expires, int | float) or isinstance(expires, bool) or not math.isfinite(expires):
            raise TokenInvalid("malformed", "exp is not a number")
        if expires <= now - leeway:
            raise TokenInvalid("expired", "the token has expired")
    subject = answer.get("sub")
    token_id = answer.get("jti")
    return AccessToken(issuer=issuer, client_id=_client_id(answer),
                       subject=subject if isinstance(subject, str) else None,
                       scopes=_scopes(answer.get("scope")), expires=None if expires is None else float(expires),
                       token_id=token_id if isinstance(token_id, str) else None,
                       confirmation=_confirmation(answer.get("cnf")))


def unverified_issuer(token: str) -> str | None:
    """The ``iss`` a JWT claims, to pick the issuer whose keys verify it; None for an opaque token.

    Only a hint: nothing is believed before the signature checks with that issuer's keys.
    """
    if token.count(".") != 2 or not token.isascii():
        return None
    try:
        claims = orjson.loads(jws.extract_compact(token.encode("ascii")).payload)
    except (JoseError, ValueError, TypeError):  # unreadable: not a JWT of anyone's
        return None
    issuer = claims.get("iss") if isinstance(claims, dict) else None
    return issuer if isinstance(issuer, str) else None

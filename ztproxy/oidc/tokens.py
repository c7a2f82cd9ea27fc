"""Checking the tokens an OpenID Provider sends: ID tokens and Back-Channel Logout tokens.

Pure functions: no I/O, the keys and the clock (``now``) come in as arguments. Every refusal is
a :class:`TokenInvalid` with a short stable ``reason``; a token whose ``kid`` is not in the key
set is an :class:`UnknownSigningKey`, so the caller can refetch the JWKS (rate-limited) and retry.

Reasons: ``malformed`` (not a signed JWT, or a claim of the wrong type), ``algorithm``, ``crit``,
``type``, ``unknown-key``, ``signature``, ``issuer``, ``audience``, ``azp``, ``expired``,
``not-yet-valid``, ``iat``, ``subject``, ``nonce``, ``auth-time``, ``at-hash``, ``events``,
``sub-sid``, ``jti``.

This module imports no aiohttp.
"""

from __future__ import annotations

import hmac
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from authlib.oidc.core.util import create_half_hash
from joserfc import jws, jwt
from joserfc.errors import (
    BadSignatureError,
    ClaimError,
    ExpiredTokenError,
    JoseError,
    MissingClaimError,
    UnsupportedAlgorithmError,
)
from joserfc.jwa import JWSAlgModel
from joserfc.jwk import Key, KeySet
from joserfc.jws import JWSRegistry

from ztproxy.config.identity import MfaConfig

# RFC 8725 3.1 / OIDC Core 3.1.3.7 (6, 7): asymmetric algorithms only, whatever the caller lists.
# HS* would let anyone holding the client secret mint ID tokens, and invites RS/HS key confusion.
ASYMMETRIC_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
                                   "ES256", "ES384", "ES512", "EdDSA"})
# An ID token comes straight from the token endpoint: one issued longer ago than this is a replay
# or a broken clock (OIDC Core 3.1.3.7 (10) lets the client bound iat).
DEFAULT_MAX_ID_TOKEN_AGE = 600.0
DEFAULT_MAX_LOGOUT_TOKEN_AGE = 120.0
BACKCHANNEL_LOGOUT_EVENT = "http://schemas.openid.net/event/backchannel-logout"
_MAX_MESSAGE_LENGTH = 200
_MAX_SUBJECT_LENGTH = 255  # OIDC Core 2: sub MUST NOT exceed 255 ASCII characters
_LOGOUT_TYPES = frozenset({"jwt", "logout+jwt"})  # Back-Channel Logout 2.4: explicit typing
_CLAIM_REASONS = {"iss": "issuer", "aud": "audience", "exp": "expired", "nbf": "not-yet-valid",
                  "iat": "iat", "sub": "subject", "jti": "jti"}
_STRING_CLAIMS = ("iss", "sub", "azp", "nonce", "acr", "sid", "jti", "at_hash", "email", "name")
_TIME_CLAIMS = ("exp", "iat", "nbf", "auth_time")


class TokenInvalid(Exception):
    """A token was refused. ``reason`` is a stable code for logs and metrics; the message is detail."""

    def __init__(self, reason: str, message: str) -> None:
        # Messages quote the token (alg, kid, typ...): bounded, so a crafted one cannot flood the logs.
        super().__init__(f"{reason}: {message[:_MAX_MESSAGE_LENGTH]}")
        self.reason = reason
        self.detail = message[:_MAX_MESSAGE_LENGTH]


class UnknownSigningKey(TokenInvalid):
    """No key in the set has the token's ``kid`` (or, without a kid, fits its alg): refetch the JWKS."""

    def __init__(self, kid: str | None) -> None:
        super().__init__("unknown-key", f"no key {kid!r} in the provider's key set" if kid is not None
                         else "no key in the provider's key set fits the token's algorithm")
        self.kid = kid


@dataclass(frozen=True, slots=True)
class IdTokenClaims:
    sub: str
    iss: str
    aud: tuple[str, ...]
    exp: float
    iat: float
    auth_time: float | None
    nonce: str | None
    acr: str | None
    amr: tuple[str, ...]
    sid: str | None
    email: str | None
    email_verified: bool | None
    name: str | None
    azp: str | None
    raw: Mapping[str, Any] = field(repr=False)  # every claim, read-only (groups, custom claims)


@dataclass(frozen=True, slots=True)
class LogoutTokenClaims:
    sub: str | None
    sid: str | None
    jti: str  # the caller makes it single-use (Back-Channel Logout 2.6 (8))
    iat: float
    accept_until: float  # after this the token is refused as too old: remember the jti until then


class _Registry(JWSRegistry):
    """joserfc's JWS registry, limited to the caller's algorithms, without joserfc's warnings.

    The allow-list decides, not a warning: RFC 9864 deprecates the name "EdDSA", but OpenID
    Providers sign with it, and pytest turns the SecurityWarning into an error.
    """

    max_header_length = 8192  # room for an x5c chain, which some providers put in the header

    def get_alg(self, name: str) -> JWSAlgModel:
        if self.allowed is None or name not in self.allowed or name not in self.algorithms:
            raise UnsupportedAlgorithmError(f"algorithm {name!r} is not allowed")
        return self.algorithms[name]


def verify_signature(token: object, keys: KeySet, algorithms: Sequence[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The header and claims of a compact JWS signed with one of ``keys``, else TokenInvalid."""
    if not isinstance(token, str) or not token.isascii():
        raise TokenInvalid("malformed", "not a compact JWT")
    allowed = [alg for alg in algorithms if alg in ASYMMETRIC_ALGORITHMS]
    registry = _Registry(algorithms=allowed, strict_check_header=False)
    try:
        header = jws.extract_compact(token.encode("ascii"), registry=registry).headers()
    except (JoseError, ValueError, TypeError, RecursionError) as exc:
        raise TokenInvalid("malformed", f"not a compact JWS: {exc}") from exc
    alg = header.get("alg")
    # RFC 8725 2.1, 3.1: the configured list picks the algorithm, never the token ("none", HS*).
    if alg not in allowed:
        raise TokenInvalid("algorithm", f"algorithm {alg!r} is not accepted (allowed: {', '.join(allowed)})")
    # RFC 7515 4.1.11: we implement no JWS extension, so a critical one means refusal. RFC 7797's
    # unencoded payload ("b64") must be critical, and has no place in a JWT anyway.
    if "crit" in header or "b64" in header:
        raise TokenInvalid("crit", f"unsupported critical header parameters {header.get('crit')!r}")
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise TokenInvalid("malformed", "the kid header is not a string")
    # RFC 8725 3.10 / OIDC Core 10.1: keys come only from the configured set; jku, x5u, jwk and
    # x5c header parameters are never looked at.
    for key in _candidate_keys(keys, kid, alg, registry):
        try:
            decoded = jwt.decode(token, key, registry=registry)
        except BadSignatureError:
            continue
        except (JoseError, ValueError, TypeError, RecursionError) as exc:
            raise TokenInvalid("malformed", f"the payload is not a JSON object: {exc}") from exc
        return dict(decoded.header), dict(decoded.claims)
    raise TokenInvalid("signature", "the signature does not verify with the provider's keys")


def _candidate_keys(keys: KeySet, kid: str | None, alg: str, registry: _Registry) -> list[Key]:
    """The keys that may have signed the token: the one named by kid, or without one each that fits alg."""
    named = [key for key in keys.keys if kid is None or key.kid == kid]
    if kid is not None and not named:
        raise UnknownSigningKey(kid)
    fitting = []
    for key in named:
        try:
            registry.algorithms[alg].check_key(key)  # key type, curve, "use" and "alg" of the JWK
        except JoseError:
            continue
        fitting.append(key)
    if not fitting:
        if kid is None:
            raise UnknownSigningKey(None)
        raise TokenInvalid("algorithm", f"key {kid!r} cannot verify {alg} signatures")
    return fitting


def token_type(header: Mapping[str, Any]) -> str | None:
    """The typ header as a comparable media type (RFC 7515 4.1.9: "application/" may be left out,
    and media types compare case-insensitively)."""
    typ = header.get("typ")
    if typ is None:
        return None
    if not isinstance(typ, str):
        raise TokenInvalid("malformed", "the typ header is not a string")
    return typ.lower().removeprefix("application/")


def _numeric_date(value: object) -> bool:
    # RFC 7519 2: a JSON number; bool is not one, and NaN or Infinity would defeat every comparison.
    try:
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    except OverflowError:
        return False


def check_types(claims: Mapping[str, Any]) -> None:
    """A claim of the wrong JSON type is ``malformed``, whatever its value (never a TypeError later)."""
    for name in _STRING_CLAIMS:
        if claims.get(name) is not None and not isinstance(claims[name], str):
            raise TokenInvalid("malformed", f"claim {name!r} is not a string")
    for name in _TIME_CLAIMS:
        if claims.get(name) is not None and not _numeric_date(claims[name]):
            raise TokenInvalid("malformed", f"claim {name!r} is not a finite number")
    aud = claims.get("aud")
    if aud is not None and not isinstance(aud, str) and not _strings(aud):
        raise TokenInvalid("malformed", "claim 'aud' is neither a string nor a list of strings")
    if claims.get("amr") is not None and not _strings(claims["amr"]):
        raise TokenInvalid("malformed", "claim 'amr' is not a list of strings")  # OIDC Core 2
    _email_verified(claims.get("email_verified"))


def _strings(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _email_verified(value: object) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    # Some providers (Amazon Cognito) send the JSON strings "true" and "false".
    if value in ("true", "false"):
        return value == "true"
    raise TokenInvalid("malformed", "claim 'email_verified' is not a boolean")


def check_registered_claims(claims: Mapping[str, Any], *, issuer: str, audience: str, now: float,
                            leeway: float, essential: Sequence[str]) -> None:
    """iss, aud, exp, nbf, iat and sub with joserfc's claims registry (types already checked)."""
    options: dict[str, jwt.ClaimsOption] = {name: {"essential": True} for name in essential}
    options["iss"] = {"essential": True, "value": issuer}  # OIDC Core 3.1.3.7 (2): exact match
    options["aud"] = {"essential": True, "value": audience}  # OIDC Core 3.1.3.7 (3): aud has us
    # joserfc compares whole seconds; rounding now down and leeway up errs by under two seconds.
    registry = jwt.JWTClaimsRegistry(now=math.floor(now), leeway=math.ceil(leeway), **options)
    try:
        registry.validate({name: value for name, value in claims.items() if value is not None})
    except ExpiredTokenError as exc:  # OIDC Core 3.1.3.7 (9)
        raise TokenInvalid("expired", "the token has expired") from exc
    except ClaimError as exc:
        claim = exc.claim.split(",")[0]
        what = "is missing" if isinstance(exc, MissingClaimError) else "is not acceptable"
        raise TokenInvalid(_CLAIM_REASONS.get(claim, "malformed"), f"claim {claim!r} {what}") from exc
    except JoseError as exc:
        raise TokenInvalid("malformed", str(exc)) from exc


def _check_iat_age(iat: float, *, now: float, leeway: float, max_age: float) -> None:
    if now - iat > max_age + leeway:
        raise TokenInvalid("iat", f"the token was issued {now - iat:.0f} s ago (at most {max_age:.0f} s)")


def validate_id_token(token: str, *, keys: KeySet, issuer: str, client_id: str, algorithms: Sequence[str],
                      nonce: str, now: float, leeway: float, max_age: float | None = None,
                      access_token: str | None = None,
                      max_token_age: float = DEFAULT_MAX_ID_TOKEN_AGE) -> IdTokenClaims:
    """Validate the ID token of a login (OIDC Core 3.1.3.7) and return its claims.

    ``nonce`` is the one sent in the authentication request; ``max_age`` the one sent, if any;
    ``access_token`` the one from the same token response (checked against ``at_hash``);
    ``max_token_age`` bounds how long ago the token may have been issued (``iat``).
    """
    if not nonce:
        raise ValueError("validate_id_token needs the nonce sent in the authentication request")
    header, claims = verify_signature(token, keys, algorithms)  # OIDC Core 3.1.3.7 (6-8)
    # RFC 8725 3.11: a token explicitly typed as another kind of JWT (logout+jwt, at+jwt, ...) is
    # not an ID token. OIDC Core names no typ for ID tokens, so "JWT", other values or none pass.
    typ = token_type(header)
    if typ is not None and typ.endswith("+jwt"):
        raise TokenInvalid("type", f"a token of type {header['typ']!r} is not an ID token")
    check_types(claims)
    check_registered_claims(claims, issuer=issuer, audience=client_id, now=now, leeway=leeway,
                             essential=("sub", "exp", "iat"))  # OIDC Core 2: all REQUIRED
    if len(claims["sub"]) > _MAX_SUBJECT_LENGTH:
        raise TokenInvalid("subject", "claim 'sub' is longer than 255 characters")
    aud = (claims["aud"],) if isinstance(claims["aud"], str) else tuple(claims["aud"])
    azp = claims.get("azp")
    # OIDC Core 3.1.3.7 (4, 5): several audiences need an azp, and an azp must be us.
    if len(set(aud)) > 1 and azp is None:
        raise TokenInvalid("azp", "the token has several audiences but no azp")
    if azp is not None and azp != client_id:
        raise TokenInvalid("azp", f"the token was issued to {azp!r}")
    _check_iat_age(claims["iat"], now=now, leeway=leeway, max_age=max_token_age)  # 3.1.3.7 (10)
    # OIDC Core 3.1.3.7 (11): the nonce must be the one we sent (and bound to this browser).
    token_nonce = claims.get("nonce")
    if token_nonce is None:
        raise TokenInvalid("nonce", "the token carries no nonce")
    if not hmac.compare_digest(token_nonce.encode(), nonce.encode()):
        raise TokenInvalid("nonce", "the nonce is not the one sent with this login")
    auth_time = claims.get("auth_time")
    if auth_time is not None and auth_time > now + leeway:
        raise TokenInvalid("auth-time", "auth_time is in the future")
    # OIDC Core 3.1.3.7 (13): with max_age, auth_time is required and bounds the authentication's age.
    if max_age is not None:
        if auth_time is None:
            raise TokenInvalid("auth-time", "max_age was requested but the token carries no auth_time")
        if now - auth_time > max_age + leeway:
            raise TokenInvalid("auth-time", f"the user authenticated {now - auth_time:.0f} s ago "
                                            f"(max_age {max_age:.0f} s)")
    # OIDC Core 3.2.2.9 / 3.3.2.11: at_hash binds the access token to this ID token.
    at_hash = claims.get("at_hash")
    if at_hash is not None and access_token is not None:
        expected = create_half_hash(access_token, header["alg"])
        if not isinstance(expected, bytes) or not hmac.compare_digest(expected, at_hash.encode()):
            raise TokenInvalid("at-hash", "at_hash does not match the access token")
    return IdTokenClaims(
        sub=claims["sub"], iss=claims["iss"], aud=aud, exp=float(claims["exp"]), iat=float(claims["iat"]),
        auth_time=float(auth_time) if auth_time is not None else None, nonce=token_nonce,
        acr=claims.get("acr"), amr=tuple(claims.get("amr") or ()), sid=claims.get("sid"),
        email=claims.get("email"), email_verified=_email_verified(claims.get("email_verified")),
        name=claims.get("name"), azp=azp, raw=MappingProxyType(claims))


def validate_logout_token(token: str, *, keys: KeySet, issuer: str, client_id: str, algorithms: Sequence[str],
                          now: float, leeway: float,
                          max_token_age: float = DEFAULT_MAX_LOGOUT_TOKEN_AGE) -> LogoutTokenClaims:
    """Validate a Back-Channel Logout token (OIDC Back-Channel Logout 1.0 2.6) and return its claims."""
    header, claims = verify_signature(token, keys, algorithms)  # 2.6 (2, 3): as for ID tokens
    typ = token_type(header)
    if typ is not None and typ not in _LOGOUT_TYPES:
        raise TokenInvalid("type", f"a token of type {header['typ']!r} is not a logout token")
    # 2.6 (7) / 2.4: a nonce is prohibited, so a logout token can never pass for an ID token.
    if "nonce" in claims:
        raise TokenInvalid("nonce", "a logout token must not carry a nonce")
    check_types(claims)
    # 2.6 (4): iss, aud, iat and exp as for ID tokens; 2.4 (final, 2023): iat, exp and jti are REQUIRED.
    check_registered_claims(claims, issuer=issuer, audience=client_id, now=now, leeway=leeway,
                             essential=("iat", "exp", "jti"))
    _check_iat_age(claims["iat"], now=now, leeway=leeway, max_age=max_token_age)
    # 2.6 (6) / 2.4: the events claim is what makes this JWT a logout token.
    events = claims.get("events")
    if not isinstance(events, dict) or not isinstance(events.get(BACKCHANNEL_LOGOUT_EVENT), dict):
        raise TokenInvalid("events", f"no {BACKCHANNEL_LOGOUT_EVENT} event with a JSON object value")
    sub, sid = claims.get("sub") or None, claims.get("sid") or None
    if sub is None and sid is None:  # 2.6 (5)
        raise TokenInvalid("sub-sid", "the token names neither a subject (sub) nor a session (sid)")
    iat, exp = float(claims["iat"]), claims.get("exp")
    accept_until = iat + max_token_age + leeway
    if exp is not None:
        accept_until = min(accept_until, float(exp) + leeway)
    return LogoutTokenClaims(sub=sub, sid=sid, jti=claims["jti"], iat=iat, accept_until=accept_until)


def is_mfa(acr: str | None, amr: Sequence[str], mfa: MfaConfig) -> bool:
    """Whether a login used a second factor: an accepted acr, or an accepted amr value.

    A token without acr and amr counts as single-factor.
    """
    methods = (amr,) if isinstance(amr, str) else amr  # a lone string is one method, not letters
    return (acr is not None and acr in mfa.mfa_acr) or not frozenset(mfa.accepted_amr).isdisjoint(methods)

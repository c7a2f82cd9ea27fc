"""Signing the identity assertion (``X-Ztproxy-Jwt-Assertion``), with a per-(session, route) cache.

An assertion is a JWT signed ES256 with the key ring's current signing key (kid in the
header), carrying who the user is, how they authenticated and from which device, for one
route's audience; or, for a calling service, its client, scopes, SPIFFE ID and how its token
was bound to it (``caller`` says which of the two). Signing costs far more than the rest of
the hot path, so a signed token is reused for the same session, route, audience, identity,
device and signing key until fewer than ``reuse_margin`` seconds (default ttl/4: 15 s of the
default 60 s) of its life remain; the upstream always gets at least that long to verify it. Any change of identity
(groups refreshed at the IdP), device posture or signing key gives a fresh token.
This module imports no aiohttp.
"""

from __future__ import annotations

import base64
import hashlib
import math
import secrets
from collections import OrderedDict
from typing import Any

from joserfc import jwt

from ztproxy.assertion.keys import ALGORITHM, KeyRing
from ztproxy.policy.model import Device, Identity, Service

DEFAULT_CACHE_SIZE = 10_000

# What the claims depend on, apart from time: any change means a new token.
_IdentityFacts = tuple[Any, ...]
_DeviceFacts = tuple[Any, ...] | None
_CacheKey = tuple[str, str, str, _IdentityFacts, _DeviceFacts, str, str]


def sid_for(session: str, route: str) -> str:
    """The ``sid`` claim: a hash of the session handle and the route, never the session id.

    ``session`` must be a high-entropy public handle of the session (the hash does not make
    a guessable value secret). Hashed with the route, so each app sees another sid for the
    same session and apps cannot link sessions across routes by it; the proxy can compute
    it again to match an app's log line to a session.
    """
    digest = hashlib.sha256(b"ztproxy-sid\x00" + route.encode() + b"\x00" + session.encode()).digest()
    return base64.urlsafe_b64encode(digest[:16]).rstrip(b"=").decode("ascii")


def _identity_facts(identity: Identity | Service) -> _IdentityFacts:
    if isinstance(identity, Service):
        return (identity.subject, identity.client_id, identity.spiffe_id, identity.scopes, identity.binding)
    return (identity.subject, identity.email, identity.name, identity.groups, identity.acr, identity.amr,
            identity.auth_time)


def _caller_claims(identity: Identity | Service) -> dict[str, Any]:
    """Who is calling: a person (from the session) or a service (from its token or certificate)."""
    if isinstance(identity, Service):
        optional: dict[str, Any] = {"client_id": identity.client_id, "spiffe_id": identity.spiffe_id,
                                    "scope": " ".join(sorted(identity.scopes)) or None}
        return {"caller": "service", "sub": identity.subject, "binding": identity.binding,
                **{name: value for name, value in optional.items() if value is not None}}
    optional = {"email": identity.email, "name": identity.name, "acr": identity.acr,
                "amr": list(identity.amr) or None,
                "auth_time": int(identity.auth_time.timestamp()) if identity.auth_time else None}
    return {"caller": "person", "sub": identity.subject, "groups": sorted(identity.groups),
            **{name: value for name, value in optional.items() if value is not None}}


def _device_facts(device: Device | None) -> _DeviceFacts:
    if device is None:
        return None
    return (device.id, device.managed, device.disk_encrypted, device.platform, device.os_version, device.score,
            device.compliant)


def device_claim(device: Device) -> dict[str, Any]:
    """The posture summary an app may act on; fields the providers did not report are left out."""
    claim: dict[str, Any] = {"id": device.id, "managed": device.managed, "disk_encrypted": device.disk_encrypted}
    for name, value in (("platform", device.platform), ("os_version", device.os_version), ("score", device.score)):
        if value is not None:
            claim[name] = value
    if not device.compliant:  # a security signal said so (CAEP device-compliance-change)
        claim["compliant"] = False
    return claim


class AssertionSigner:
    """Signs assertions with the key ring's signing key; ``signs`` counts actual signatures."""

    def __init__(self, keyring: KeyRing, *, issuer: str, ttl: float | None = None,
                 reuse_margin: float | None = None, cache_size: int = DEFAULT_CACHE_SIZE) -> None:
        ttl = keyring.policy.ttl if ttl is None else ttl
        if not 0 < ttl <= keyring.policy.ttl:
            # The key ring keeps a retired key published for its policy's ttl: no longer-lived token.
            raise ValueError(f"ttl must be positive and at most the key ring's ttl ({keyring.policy.ttl}s)")
        if not issuer:
            raise ValueError("issuer is required")
        self.keyring = keyring
        self.issuer = issuer
        self.ttl = math.ceil(ttl)  # NumericDate in whole seconds (RFC 7519 2)
        self.reuse_margin = ttl / 4 if reuse_margin is None else reuse_margin
        self.signs = 0
        self._cache_size = cache_size
        self._cache: OrderedDict[_CacheKey, tuple[str, int]] = OrderedDict()  # -> (token, exp), LRU

    def assertion(self, *, session: str, route: str, audience: str, identity: Identity | Service,
                  device: Device | None, now: float, risk: str = "low") -> str:
        """The assertion for this request: cached, or freshly signed. ``risk``: the session's level."""
        key = self.keyring.signing_key(now)
        cache_key = (session, route, audience, _identity_facts(identity), _device_facts(device), key.kid, risk)
        cached = self._cache.get(cache_key)
        if cached is not None and cached[1] - now > self.reuse_margin:
            self._cache.move_to_end(cache_key)
            return cached[0]
        issued = int(now)
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": audience,
            **_caller_claims(identity),
            "iat": issued,
            "nbf": issued,
            "exp": issued + self.ttl,
            "jti": secrets.token_urlsafe(16),
            "sid": sid_for(session, route),
            "route": route,
            "risk": risk,
        }
        if device is not None:
            claims["device"] = device_claim(device)
        token = jwt.encode({"alg": ALGORITHM, "kid": key.kid, "typ": "JWT"}, claims, key.key,
                           algorithms=[ALGORITHM])
        self.signs += 1
        self._cache[cache_key] = (token, claims["exp"])
        self._cache.move_to_end(cache_key)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return token

"""Verifying ztproxy's identity assertions: signature, algorithm, issuer, audience, lifetime.

The JWKS is fetched over HTTP (or given statically), cached for ``cache_ttl`` and refetched
when a token names a key id it does not know, at most once per ``refetch_cooldown`` so a
stream of forged kids cannot turn the app into a request amplifier. The algorithm is
pinned (ES256 by default): a token's own ``alg`` header never chooses how it is checked.
Uses only the standard library and joserfc, so apps need nothing else.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

ASSERTION_HEADER = "X-Ztproxy-Jwt-Assertion"
DEFAULT_LEEWAY = 30.0
DEFAULT_CACHE_TTL = 300.0
DEFAULT_REFETCH_COOLDOWN = 30.0
_FETCH_TIMEOUT = 5.0
_MAX_JWKS_BYTES = 512 * 1024


class AssertionInvalid(Exception):
    """The assertion is missing, malformed, forged, expired or meant for someone else."""


@dataclass(frozen=True)
class Identity:
    """Who is calling, as ztproxy verified and signed it."""

    subject: str
    email: str | None
    name: str | None
    groups: tuple[str, ...]
    claims: Mapping[str, Any] = field(repr=False)
    # A service (an access token's client, a workload) or a person (a browser session).
    is_service: bool = False
    client_id: str | None = None  # of a service's access token
    scopes: tuple[str, ...] = ()  # of a service's access token

    @classmethod
    def from_claims(cls, claims: Mapping[str, Any]) -> Identity:
        groups = claims.get("groups") or ()
        scope = claims.get("scope")
        return cls(subject=str(claims["sub"]), email=claims.get("email"), name=claims.get("name"),
                   groups=tuple(str(group) for group in groups) if isinstance(groups, list) else (),
                   claims=dict(claims), is_service=claims.get("caller") == "service",
                   client_id=claims.get("client_id") if isinstance(claims.get("client_id"), str) else None,
                   scopes=tuple(scope.split()) if isinstance(scope, str) else ())


def _fetch_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=_FETCH_TIMEOUT) as response:
        body = response.read(_MAX_JWKS_BYTES + 1)
    if len(body) > _MAX_JWKS_BYTES:
        raise AssertionInvalid("the JWKS document is too large")
    document = json.loads(body)
    if not isinstance(document, dict):
        raise AssertionInvalid("the JWKS document is not a JSON object")
    return document


class Verifier:
    """Checks ``X-Ztproxy-Jwt-Assertion`` values. Issuer and audience are required.

    ``issuer`` is the proxy's public URL; ``audience`` is the route's audience (by default
    the origin your app is published at, e.g. ``https://wiki.corp.example``). A token for
    another route, or from another proxy, is refused.
    """

    def __init__(
        self,
        *,
        issuer: str,
        audience: str,
        jwks_url: str | None = None,
        jwks: Mapping[str, Any] | None = None,
        leeway: float = DEFAULT_LEEWAY,
        algorithms: Sequence[str] = ("ES256",),
        cache_ttl: float = DEFAULT_CACHE_TTL,
        refetch_cooldown: float = DEFAULT_REFETCH_COOLDOWN,
        fetch: Callable[[str], dict[str, Any]] = _fetch_json,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not issuer or not audience:
            raise ValueError("issuer and audience are required")
        if (jwks_url is None) == (jwks is None):
            raise ValueError("give exactly one of jwks_url or jwks")
        if "none" in (alg.lower() for alg in algorithms) or any(alg.startswith("HS") for alg in algorithms):
            raise ValueError("only asymmetric signature algorithms can verify ztproxy assertions")
        self.issuer = issuer
        self.audience = audience
        self._jwks_url = jwks_url
        self._algorithms = list(algorithms)
        self._cache_ttl = cache_ttl
        self._cooldown = refetch_cooldown
        self._fetch = fetch
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: KeySet | None = KeySet.import_key_set(dict(jwks)) if jwks is not None else None  # type: ignore[arg-type]
        self._fetched_at = -float("inf")
        self._refetched_at = -float("inf")  # for an unknown kid: at most once per cooldown
        self._claims = jwt.JWTClaimsRegistry(
            leeway=int(leeway),
            iss={"essential": True, "value": issuer},
            aud={"essential": True, "value": audience},
            sub={"essential": True},
            exp={"essential": True},
        )

    def _key_set(self, *, refresh: bool) -> KeySet:
        """The cached keys; fetched when stale, or when ``refresh`` and the cooldown allows."""
        with self._lock:
            if self._jwks_url is None:
                assert self._keys is not None
                return self._keys
            now = self._clock()
            stale = now - self._fetched_at > self._cache_ttl
            # Counted from the last refetch an unknown kid caused, not from the last fetch: a key
            # rotated in just after a routine fetch is still picked up at once.
            may_refetch = now - self._refetched_at > self._cooldown
            if self._keys is None or stale or (refresh and may_refetch):
                if refresh and not stale and self._keys is not None:
                    self._refetched_at = now
                try:
                    document = self._fetch(self._jwks_url)
                    self._keys = KeySet.import_key_set(document)  # type: ignore[arg-type]
                except (OSError, ValueError, JoseError) as exc:
                    if self._keys is None:
                        raise AssertionInvalid(f"cannot load the JWKS: {exc}") from exc
                    # Keep serving with the keys we have; try again after the cooldown.
                self._fetched_at = now
            assert self._keys is not None
            return self._keys

    def verify(self, token: str | None) -> Identity:
        """Verify synchronously (WSGI, scripts). Raises AssertionInvalid."""
        if not token:
            raise AssertionInvalid("no assertion: the request did not come through ztproxy")
        try:
            kid = jws.extract_compact(token.encode("ascii")).headers().get("kid")
        except (JoseError, ValueError, UnicodeEncodeError) as exc:
            raise AssertionInvalid("the assertion is not a well-formed JWT") from exc
        keys = self._key_set(refresh=False)
        if kid is not None and not any(key.kid == kid for key in keys.keys):
            keys = self._key_set(refresh=True)  # maybe rotated in since the last fetch
        try:
            decoded = jwt.decode(token, keys, algorithms=self._algorithms)
            self._claims.validate(decoded.claims)
        except (JoseError, ValueError) as exc:
            raise AssertionInvalid(f"the assertion was refused: {exc}") from exc
        return Identity.from_claims(decoded.claims)

    async def averify(self, token: str | None) -> Identity:
        """Verify from async code; JWKS fetches run in a thread, never on the event loop."""
        if self._jwks_url is None or (self._keys is not None and \
                self._clock() - self._fetched_at <= self._cache_ttl):
            try:
                return self.verify(token)
            except AssertionInvalid:
                if self._jwks_url is None:
                    raise
        return await asyncio.to_thread(self.verify, token)

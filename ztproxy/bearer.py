"""Bearer tokens (RFC 6750): the services that call routes whose rules name them.

A route whose allow rules name services (``clients``, ``scopes``, ``services``) reads the
``Authorization: Bearer`` header. It accepts access tokens from its identity provider and
from the ``token_issuers`` it lists; the token's audience must be the route's. A JWT
(RFC 9068) is verified with its issuer's keys (the issuer is picked by the token's unverified
``iss``, then nothing is believed before the signature verifies); an opaque token is
introspected (RFC 7662) at each listed issuer that has introspection credentials. A verified
token is remembered by its hash until it expires (an introspection answer, at most the
issuer's ``introspection_cache``), so a service calling again costs no issuer round trip.
An issuer that cannot be asked fails closed: 503 ``token-service-unavailable``.

A token bound to its sender (``cnf``) is accepted only with the proof, on every request:
``cnf.jkt`` with the ``DPoP`` scheme and a DPoP proof of that key (RFC 9449; each proof used
once, on every replica, through the session store), ``cnf.x5t#S256`` over a TLS connection
presenting that certificate (RFC 8705). The service's ``binding`` says which: ``dpop``,
``mtls`` or ``none``.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

import aiohttp
import structlog
from aiohttp import web
from multidict import MultiMapping

from ztproxy.auth import AUTH
from ztproxy.config.schema import Config
from ztproxy.config.tokens import DpopConfig
from ztproxy.context import CompiledRoute
from ztproxy.errors import BadRequest, IdentityProviderUnavailable, TokenServiceUnavailable
from ztproxy.fetch import json_client
from ztproxy.memo import Memo
from ztproxy.oidc.access_tokens import AccessToken, from_introspection, unverified_issuer, validate_access_token
from ztproxy.oidc.dpop import certificate_thumbprint, dpop_nonces, validate_dpop_proof
from ztproxy.oidc.provider import Provider
from ztproxy.oidc.tokens import ASYMMETRIC_ALGORITHMS, TokenInvalid, UnknownSigningKey
from ztproxy.policy import reasons
from ztproxy.policy.model import Service
from ztproxy.sessions.store import open_store
from ztproxy.state import CONFIG, ROUTE_LIST

_log = structlog.get_logger("ztproxy.bearer")

_MAX_TOKEN = 16 * 1024  # far above any real access token; a bigger header is refused unread
_CACHE_SIZE = 20_000
_TOKEN68 = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/=")

FirstUse = Callable[[str, float], Awaitable[bool]]  # (key, ttl) -> whether nobody used it before


class TokenRejected(Exception):
    """The token is not acceptable here; ``reason`` is the policy reason, ``description`` for the caller.

    ``challenge``: the WWW-Authenticate (and DPoP-Nonce) headers of the refusal, when they
    are not RFC 6750's ``invalid_token`` (a DPoP proof's refusal has its own scheme).
    """

    def __init__(self, reason: str, description: str, challenge: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(description)
        self.reason = reason
        self.description = description
        self.challenge = challenge


@dataclass(frozen=True, slots=True)
class Presented:
    """An access token as the request carried it."""

    token: str
    scheme: str  # "bearer" (RFC 6750) or "dpop" (RFC 9449 7.1)


@dataclass(frozen=True, slots=True)
class Evidence:
    """What the request shows of its sender, for a token bound to one."""

    method: str
    url: str  # the request's URL as the client addressed it, without query
    dpop: str | None  # the DPoP header
    certificate: bytes | None  # DER of the TLS client certificate, verified by the listener


def presented_token(headers: MultiMapping[str]) -> Presented | None:
    """The token of ``Authorization: Bearer|DPoP <token>``; None when there is none of ours."""
    values = headers.getall("Authorization", ())
    if not values:
        return None
    if len(values) > 1:
        raise BadRequest("More than one Authorization header.")
    scheme, _, token = values[0].strip().partition(" ")
    scheme = scheme.lower()
    if scheme not in ("bearer", "dpop"):
        return None  # another scheme (Basic for the app itself...): not ours to judge
    token = token.strip()
    if not token or len(token) > _MAX_TOKEN or not set(token) <= _TOKEN68:
        raise TokenRejected(reasons.TOKEN_INVALID, "The access token is malformed.")
    return Presented(token, scheme)


@dataclass(frozen=True, slots=True)
class Verified:
    """A token that verified, for as long as it may be trusted without asking again."""

    service: Service  # binding "none": what the sender proves is checked per request
    until: float  # wall clock: the token's exp, or the introspection bound
    confirmation: Mapping[str, Any] | None  # cnf (RFC 7800)
    # Wall clock: the end of the credential itself (its exp; an introspected token without
    # one: the introspection bound), when a WebSocket it opened closes.
    ends: float


@dataclass(frozen=True, slots=True)
class _Issuer:
    provider: Provider
    introspects: bool
    introspection_cache: float


class BearerTokens:
    """The issuers tokens may come from, and the tokens already verified."""

    def __init__(self, issuers: Mapping[str, _Issuer], routes: Mapping[str, tuple[str, ...]], *,
                 dpop: DpopConfig, first_use: FirstUse, nonce_secret: bytes) -> None:
        self._issuers = issuers
        self._routes = routes  # route name -> the names of the issuers it accepts tokens from
        self._verified: Memo[tuple[str, str], Verified] = Memo(_CACHE_SIZE)
        self._dpop = dpop
        self._first_use = first_use  # a DPoP proof's jti: True the first time, on any replica
        self._nonce_secret = nonce_secret

    def cached(self, route: CompiledRoute, token: str, now: float) -> Verified | None:
        """A token verified before for this route, still valid: no I/O."""
        entry = self._verified.get((_digest(token), route.name))
        if entry is None or entry.until <= now:
            return None
        return entry

    def bind(self, verified: Verified, presented: Presented, evidence: Evidence,
             now: float) -> Service | Awaitable[Service]:
        """The service with what its request proves of the sender (``binding``), or TokenRejected.

        Awaitable only for a DPoP proof, whose single use is checked in the session store.
        """
        cnf = verified.confirmation or {}
        service = verified.service
        if "jkt" in cnf:
            return self._dpop_bound(service, str(cnf["jkt"]), presented, evidence, now)
        if presented.scheme == "dpop":
            raise TokenRejected(reasons.TOKEN_INVALID, "This access token is not bound to a DPoP key: "
                                                       "send it with the Bearer scheme.")
        if "x5t#S256" in cnf:
            # RFC 8705 3: the certificate of this TLS connection must be the one the token names.
            if evidence.certificate is None or not hmac.compare_digest(
                    certificate_thumbprint(evidence.certificate), str(cnf["x5t#S256"])):
                raise TokenRejected(reasons.SENDER_CONSTRAINT_FAILED, "This access token is bound to a client "
                                    "certificate this connection did not present.")
            return replace(service, binding="mtls")
        return service

    async def _dpop_bound(self, service: Service, jkt: str, presented: Presented, evidence: Evidence,
                         now: float) -> Service:
        config = self._dpop
        nonces = dpop_nonces(self._nonce_secret, now) if config.nonce else ()
        if presented.scheme != "dpop" or evidence.dpop is None:
            raise TokenRejected(reasons.SENDER_CONSTRAINT_FAILED, "This access token is bound to a key: send it "
                                "with the DPoP scheme and a DPoP proof.", self._dpop_challenge(nonces))
        try:
            proof = validate_dpop_proof(evidence.dpop, method=evidence.method, url=evidence.url,
                                        access_token=presented.token, now=now, max_age=config.max_age,
                                        leeway=config.clock_skew, nonces=nonces)
        except TokenInvalid as exc:
            error = "use_dpop_nonce" if exc.reason == "dpop-nonce" else "invalid_dpop_proof"
            raise TokenRejected(reasons.SENDER_CONSTRAINT_FAILED, exc.detail,
                                self._dpop_challenge(nonces, error)) from exc
        if not hmac.compare_digest(proof.jkt, jkt):
            raise TokenRejected(reasons.SENDER_CONSTRAINT_FAILED, "The DPoP proof is signed by another key than "
                                "the one the access token is bound to.", self._dpop_challenge(nonces))
        # RFC 9449 11.1: a proof is used once, whichever replica sees it.
        marker = f"dpop-jti:{_digest(jkt + ':' + proof.jti)}"
        if not await self._first_use(marker, config.max_age + 2 * config.clock_skew):
            raise TokenRejected(reasons.SENDER_CONSTRAINT_FAILED, "This DPoP proof was used before.",
                                self._dpop_challenge(nonces))
        return replace(service, binding="dpop")

    @staticmethod
    def _dpop_challenge(nonces: tuple[str, ...], error: str = "invalid_dpop_proof") -> tuple[tuple[str, str], ...]:
        algs = " ".join(sorted(ASYMMETRIC_ALGORITHMS))
        challenge = (("WWW-Authenticate", f'DPoP realm="ztproxy", error="{error}", algs="{algs}"'),)
        return (*challenge, ("DPoP-Nonce", nonces[0])) if nonces else challenge

    async def verify(self, route: CompiledRoute, token: str, now: float) -> Verified:
        """The verified token, or TokenRejected / TokenServiceUnavailable."""
        names = self._routes.get(route.name, ())
        issuers = [self._issuers[name] for name in names]
        claimed = unverified_issuer(token)
        try:
            if claimed is not None:
                issuer = next((i for i in issuers if i.provider.config.issuer == claimed), None)
                if issuer is None:
                    raise TokenRejected(reasons.TOKEN_INVALID, "The token's issuer is not trusted here.")
                access, until = await self._jwt(issuer, token, route.audience, now), None
            else:
                access, until = await self._introspect(issuers, token, route.audience, now)
        except TokenInvalid as exc:
            reason = reasons.TOKEN_EXPIRED if exc.reason == "expired" else reasons.TOKEN_INVALID
            raise TokenRejected(reason, _description(exc)) from exc
        except IdentityProviderUnavailable as exc:
            raise TokenServiceUnavailable() from exc
        expires = access.expires if access.expires is not None else now
        verified = Verified(_service_of(access), min(expires, until) if until is not None else expires,
                            access.confirmation, access.expires if access.expires is not None else until or now)
        return self._verified.remember((_digest(token), route.name), verified)

    async def _jwt(self, issuer: _Issuer, token: str, audience: str, now: float) -> AccessToken:
        provider = issuer.provider
        config = provider.config
        try:
            keys = await provider.keys()
            try:
                return validate_access_token(token, keys=keys, issuer=config.issuer, audience=audience,
                                             algorithms=config.algorithms, now=now, leeway=config.clock_skew)
            except UnknownSigningKey:
                keys = await provider.keys(refetch=True)
                return validate_access_token(token, keys=keys, issuer=config.issuer, audience=audience,
                                             algorithms=config.algorithms, now=now, leeway=config.clock_skew)
        except IdentityProviderUnavailable:
            _log.warning("token_keys_unavailable", issuer=config.name)
            raise

    async def _introspect(self, issuers: list[_Issuer], token: str, audience: str,
                          now: float) -> tuple[AccessToken, float]:
        asked = [issuer for issuer in issuers if issuer.introspects]
        if not asked:
            raise TokenRejected(reasons.TOKEN_INVALID, "Only JWT access tokens are accepted here.")
        last: TokenInvalid | None = None
        for issuer in asked:
            provider = issuer.provider
            answer = await provider.introspect(token)
            try:
                access = from_introspection(answer, issuer=provider.config.issuer, audience=audience, now=now,
                                            leeway=provider.config.clock_skew)
            except TokenInvalid as exc:
                last = exc
                continue
            return access, now + issuer.introspection_cache
        assert last is not None
        raise last


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("ascii")).hexdigest()


def token_handle(token: str) -> str:
    """How logs and assertions name the token: a hash, never the token."""
    return _digest(token)[:32]


def _description(exc: TokenInvalid) -> str:
    if exc.reason == "expired":
        return "The access token has expired."
    if exc.reason == "audience":
        return "The access token is not for this application."
    return "The access token is not valid."


def _service_of(access: AccessToken) -> Service:
    spiffe = access.subject if access.subject and access.subject.startswith("spiffe://") else None
    return Service(subject=spiffe or access.client_id, client_id=access.client_id, spiffe_id=spiffe,
                   scopes=access.scopes, issuer=access.issuer, binding="none", token_id=access.token_id)


BEARER = web.AppKey[BearerTokens | None]("bearer")


def _issuers(config: Config, http: aiohttp.ClientSession) -> Iterator[tuple[str, _Issuer]]:
    for provider in config.identity_providers:
        # The proxy's own client at its sign-in IdP can introspect there too.
        yield provider.name, _Issuer(Provider(provider, http), introspects=provider.client_secret is not None,
                                     introspection_cache=60.0)
    for issuer in config.token_issuers:
        yield issuer.name, _Issuer(Provider(issuer.provider_config(), http), introspects=issuer.introspects,
                                   introspection_cache=issuer.introspection_cache)


def route_issuers(config: Config) -> dict[str, tuple[str, ...]]:
    """Each route's accepted issuers: its identity provider (default the first), then its token issuers."""
    default = config.identity_providers[0].name if config.identity_providers else None
    accepted: dict[str, tuple[str, ...]] = {}
    for route in config.routes:
        provider = route.identity_provider or default
        accepted[route.name] = (*([provider] if provider else []), *route.token_issuers)
    return accepted


async def bearer_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the issuers' clients, when a route accepts bearer tokens; after ``auth_ctx``,
    whose session store (if any) remembers DPoP proofs, as every replica must see them."""
    if not any(route.accepts_tokens for route in app[ROUTE_LIST]):
        app[BEARER] = None
        yield
        return
    config = app[CONFIG]
    timeouts = [*(i.http_timeout for i in config.identity_providers), *(i.http_timeout for i in config.token_issuers)]
    timeout = max(timeouts, default=10.0)
    auth = app[AUTH]
    store = auth.sessions.store if auth is not None else open_store(config.sessions)

    async def first_use(key: str, ttl: float) -> bool:
        return await store.put(key, b"", ttl, only_new=True)

    # The nonce secret: the same in every process that shares the cookie secrets.
    secrets = config.sessions.cookie_secrets
    nonce_secret = hashlib.sha256(b"ztproxy-dpop-nonce\x00" + (secrets[0] if secrets else "").encode()).digest()
    try:
        async with json_client(timeout) as http:
            app[BEARER] = BearerTokens(dict(_issuers(config, http)), route_issuers(config), dpop=config.dpop,
                                       first_use=first_use, nonce_secret=nonce_secret)
            yield
    finally:
        if auth is None:
            await store.close()

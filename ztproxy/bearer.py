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
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass

import aiohttp
import structlog
from aiohttp import web
from multidict import MultiMapping

from ztproxy.config.schema import Config
from ztproxy.context import CompiledRoute
from ztproxy.errors import BadRequest, IdentityProviderUnavailable, TokenServiceUnavailable
from ztproxy.fetch import json_client
from ztproxy.memo import Memo
from ztproxy.oidc.access_tokens import AccessToken, from_introspection, unverified_issuer, validate_access_token
from ztproxy.oidc.provider import Provider
from ztproxy.oidc.tokens import TokenInvalid, UnknownSigningKey
from ztproxy.policy import reasons
from ztproxy.policy.model import Service
from ztproxy.state import CONFIG, ROUTE_LIST

_log = structlog.get_logger("ztproxy.bearer")

_MAX_TOKEN = 16 * 1024  # far above any real access token; a bigger header is refused unread
_CACHE_SIZE = 20_000
_TOKEN68 = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/=")


class TokenRejected(Exception):
    """The token is not acceptable here; ``reason`` is the policy reason, ``description`` for the caller."""

    def __init__(self, reason: str, description: str) -> None:
        super().__init__(description)
        self.reason = reason
        self.description = description


def bearer_token(headers: MultiMapping[str]) -> str | None:
    """The token of ``Authorization: Bearer <token>`` (RFC 6750 2.1); None when there is none."""
    values = headers.getall("Authorization", ())
    if not values:
        return None
    if len(values) > 1:
        raise BadRequest("More than one Authorization header.")
    scheme, _, token = values[0].strip().partition(" ")
    if scheme.lower() != "bearer":
        return None  # another scheme (Basic for the app itself...): not ours to judge
    token = token.strip()
    if not token or len(token) > _MAX_TOKEN or not set(token) <= _TOKEN68:
        raise TokenRejected(reasons.TOKEN_INVALID, "The bearer token is malformed.")
    return token


@dataclass(frozen=True, slots=True)
class _Verified:
    service: Service
    until: float  # monotonic-free wall clock: the token's exp, or the introspection bound


@dataclass(frozen=True, slots=True)
class _Issuer:
    provider: Provider
    introspects: bool
    introspection_cache: float


class BearerTokens:
    """The issuers tokens may come from, and the tokens already verified."""

    def __init__(self, issuers: Mapping[str, _Issuer], routes: Mapping[str, tuple[str, ...]]) -> None:
        self._issuers = issuers
        self._routes = routes  # route name -> the names of the issuers it accepts tokens from
        self._verified: Memo[tuple[str, str], _Verified] = Memo(_CACHE_SIZE)

    def cached(self, route: CompiledRoute, token: str, now: float) -> Service | None:
        """The service of a token verified before for this route, still valid: no I/O."""
        entry = self._verified.get((_digest(token), route.name))
        if entry is None or entry.until <= now:
            return None
        return entry.service

    async def verify(self, route: CompiledRoute, token: str, now: float) -> Service:
        """The calling service, or TokenRejected / TokenServiceUnavailable."""
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
        service = _service_of(access)
        expires = access.expires if access.expires is not None else now
        self._verified.remember((_digest(token), route.name),
                                _Verified(service, min(expires, until) if until is not None else expires))
        return service

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
    """cleanup_ctx: the issuers' clients, when a route accepts bearer tokens."""
    if not any(route.accepts_tokens for route in app[ROUTE_LIST]):
        app[BEARER] = None
        yield
        return
    config = app[CONFIG]
    timeouts = [*(i.http_timeout for i in config.identity_providers), *(i.http_timeout for i in config.token_issuers)]
    timeout = max(timeouts, default=10.0)
    async with json_client(timeout) as http:
        app[BEARER] = BearerTokens(dict(_issuers(config, http)), route_issuers(config))
        yield

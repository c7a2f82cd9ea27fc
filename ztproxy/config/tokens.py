"""Token issuers: authorization servers whose access tokens services call routes with.

A route accepts OAuth bearer tokens (RFC 6750) when its rules name services (``clients``,
``scopes``, ``services``): from its identity provider, and from the ``token_issuers`` it
lists by name. JWT access tokens (RFC 9068) are verified with the issuer's keys; opaque ones
are introspected (RFC 7662) with the proxy's own client credentials, when it has some.

This module imports no aiohttp.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import field_validator

from ztproxy.config.identity import (
    DEFAULT_ALGORITHMS,
    DEFAULT_HTTP_TIMEOUT,
    DEFAULT_JWKS_REFETCH_COOLDOWN,
    DEFAULT_MAX_RESPONSE,
    DEFAULT_METADATA_TTL,
    IdentityProviderConfig,
    MfaConfig,
)
from ztproxy.config.values import ByteSize, Duration, HttpUrl, Model, Name

DEFAULT_INTROSPECTION_CACHE = 60.0
_ISSUER_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
# Whose tokens identify no client of the proxy's own: the Provider machinery needs a client id.
_NO_CLIENT = "ztproxy-token-verifier"


DEFAULT_DPOP_MAX_AGE = 60.0


class DpopConfig(Model):
    """How DPoP proofs (RFC 9449) of sender-constrained tokens are checked."""

    # Ask for a server nonce in each proof (RFC 9449 8): a proof made in advance is then useless.
    nonce: bool = False
    max_age: Duration = DEFAULT_DPOP_MAX_AGE  # a proof's iat at most this old
    clock_skew: Duration = 5.0  # tolerated clock difference with the caller


class TokenIssuerConfig(Model):
    name: str
    issuer: HttpUrl
    # Introspection (RFC 7662) needs the proxy's own client at that issuer; without one, only
    # JWT access tokens are accepted from it.
    client_id: Name | None = None
    client_secret: str | None = None  # or client_secret_file
    token_endpoint_auth_method: Literal["client_secret_basic", "client_secret_post"] = "client_secret_basic"
    algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS  # accepted access token signature algorithms
    http_timeout: Duration = DEFAULT_HTTP_TIMEOUT
    metadata_ttl: Duration = DEFAULT_METADATA_TTL
    jwks_refetch_cooldown: Duration = DEFAULT_JWKS_REFETCH_COOLDOWN
    clock_skew: Duration = 60.0
    max_response: ByteSize = DEFAULT_MAX_RESPONSE
    # An introspection answer is used this long at most (and never past the token's exp).
    introspection_cache: Duration = DEFAULT_INTROSPECTION_CACHE

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not _ISSUER_NAME.fullmatch(value):
            raise ValueError(f"invalid token issuer name {value!r}: use up to 32 lowercase letters, digits, "
                             "'_' and '-'")
        return value

    @field_validator("algorithms")
    @classmethod
    def _check_algorithms(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return IdentityProviderConfig.check_algorithms(value)

    @property
    def introspects(self) -> bool:
        return self.client_id is not None

    def provider_config(self) -> IdentityProviderConfig:
        """The issuer as an identity provider, for its discovery, keys and introspection."""
        return IdentityProviderConfig(
            name=self.name, issuer=self.issuer, client_id=self.client_id or _NO_CLIENT,
            client_secret=self.client_secret, token_endpoint_auth_method=self.token_endpoint_auth_method,
            algorithms=self.algorithms, use_userinfo=False, http_timeout=self.http_timeout,
            metadata_ttl=self.metadata_ttl, jwks_refetch_cooldown=self.jwks_refetch_cooldown,
            clock_skew=self.clock_skew, max_response=self.max_response, mfa=MfaConfig())

"""Device posture providers: which ones run, and how they are reached.

Each built-in provider has its own section; a section that is present turns it on. They run
in a fixed order (``ztproxy.posture.provider.BUILTIN_PROVIDERS``): client_certificate,
signed, inventory, http, then the ``custom`` ones in the order listed.
This module imports no aiohttp.
"""

from __future__ import annotations

import os
import re
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from pydantic import Field, field_validator, model_validator
from yarl import URL

from ztproxy.config.values import Duration, HttpUrl, Model
from ztproxy.headers import is_identity_header
from ztproxy.imports import resolve

DEFAULT_DEVICE_URI_PREFIX = "urn:device:"
DEFAULT_POSTURE_HEADER = "X-Device-Posture"
DEFAULT_POSTURE_ALGORITHMS = ("ES256",)
DEFAULT_POSTURE_MAX_LIFETIME = 300.0
DEFAULT_POSTURE_CLOCK_SKEW = 30.0
DEFAULT_JWKS_TTL = 3600.0
DEFAULT_JWKS_REFETCH_COOLDOWN = 30.0
DEFAULT_INVENTORY_RELOAD_INTERVAL = 1.0
DEFAULT_HTTP_TIMEOUT = 2.0
DEFAULT_HTTP_CACHE_TTL = 30.0
DEFAULT_HTTP_CACHE_SIZE = 10_000

# RFC 8725 3.1/3.2: asymmetric algorithms only, so a public key can never be used as an HMAC
# secret (algorithm confusion) and "none" is never accepted.
_KEY_TYPES: dict[str, type | tuple[type, ...]] = {
    **dict.fromkeys(("RS256", "RS384", "RS512", "PS256", "PS384", "PS512"), rsa.RSAPublicKey),
    **dict.fromkeys(("ES256", "ES384", "ES512"), ec.EllipticCurvePublicKey),
    "EdDSA": (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey),
}
# RFC 9110 5.1: a field name is a token.
_HEADER_NAME_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


class ClientCertificateConfig(Model):
    """The device id comes from the client certificate TLS verified (server.tls.client_ca_file)."""

    # The id is what follows this prefix in a URI subject alternative name ("urn:device:ID",
    # or e.g. "spiffe://corp.example/device/" for SPIFFE ids).
    uri_prefix: str = Field(default=DEFAULT_DEVICE_URI_PREFIX, min_length=1)
    common_name: bool = True  # without such a URI, the subject's common name is the id


class SignedPostureConfig(Model):
    """A posture JWT an endpoint agent sends in a request header, checked against pinned keys."""

    header: str = DEFAULT_POSTURE_HEADER
    public_key: str | None = None  # PEM; or public_key_file
    jwks_url: HttpUrl | None = None
    algorithms: tuple[str, ...] = DEFAULT_POSTURE_ALGORITHMS
    issuer: str | None = None  # when set, iss must equal it
    audience: str | None = None  # when set, aud must contain it
    max_lifetime: Duration = Field(default=DEFAULT_POSTURE_MAX_LIFETIME, gt=0)  # exp - iat at most this
    clock_skew: Duration = DEFAULT_POSTURE_CLOCK_SKEW
    require_client_certificate: bool = False  # only count a token bound to a certificate's device id
    http_timeout: Duration = Field(default=DEFAULT_HTTP_TIMEOUT, gt=0)  # fetching jwks_url
    jwks_ttl: Duration = Field(default=DEFAULT_JWKS_TTL, gt=0)
    jwks_refetch_cooldown: Duration = DEFAULT_JWKS_REFETCH_COOLDOWN  # unknown kid: refetch at most this often

    @field_validator("header")
    @classmethod
    def _check_header(cls, value: str) -> str:
        if not _HEADER_NAME_RE.fullmatch(value):
            raise ValueError(f"invalid header name {value!r}: expected a name such as {DEFAULT_POSTURE_HEADER}")
        if is_identity_header(value):
            raise ValueError(f"invalid header name {value!r}: X-Ztproxy-* headers belong to the proxy")
        return value

    @field_validator("algorithms")
    @classmethod
    def _check_algorithms(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [alg for alg in value if alg not in _KEY_TYPES]
        if bad:
            raise ValueError(f"unsupported algorithm(s) {', '.join(map(repr, bad))}: use asymmetric ones "
                             f"such as ES256, RS256, PS256 or EdDSA")
        if not value:
            raise ValueError("at least one algorithm is required")
        return value

    @model_validator(mode="after")
    def _one_key_source(self) -> SignedPostureConfig:
        if (self.public_key is None) == (self.jwks_url is None):
            raise ValueError("give either public_key (or public_key_file) or jwks_url")
        if self.public_key is not None:
            try:
                key = load_pem_public_key(self.public_key.encode())
            except (ValueError, TypeError):
                raise ValueError("public_key: expected a PEM public key (-----BEGIN PUBLIC KEY-----)") from None
            if not any(isinstance(key, _KEY_TYPES[alg]) for alg in self.algorithms):
                raise ValueError(f"public_key: a {type(key).__name__.removeprefix('_')} cannot verify "
                                 f"{', '.join(self.algorithms)}")
        return self


class InventoryConfig(Model):
    """A YAML or JSON file: device id -> posture record; reloaded when it changes."""

    file: str
    reload_interval: Duration = Field(default=DEFAULT_INVENTORY_RELOAD_INTERVAL, gt=0)

    @field_validator("file")
    @classmethod
    def _check_file(cls, value: str) -> str:
        if not os.path.isfile(value) or not os.access(value, os.R_OK):
            raise ValueError(f"cannot read the device inventory {value!r}: not a readable file")
        return value


class HttpPostureConfig(Model):
    """An MDM/EDR endpoint asked for a device's posture, by device id."""

    url: str  # with {device_id}, e.g. https://mdm.corp.example/devices/{device_id}/posture
    token: str | None = None  # sent as a bearer token; or token_file
    timeout: Duration = Field(default=DEFAULT_HTTP_TIMEOUT, gt=0)
    cache_ttl: Duration = DEFAULT_HTTP_CACHE_TTL  # an answer is reused this long per device id
    cache_size: int = Field(default=DEFAULT_HTTP_CACHE_SIZE, ge=1)

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        if "{device_id}" not in value:
            raise ValueError(f"invalid URL template {value!r}: it must contain {{device_id}}")
        sample = value.replace("{device_id}", "d")
        if "{" in sample or "}" in sample:
            raise ValueError(f"invalid URL template {value!r}: {{device_id}} is the only placeholder")
        if not sample.isascii() or any(char.isspace() or char in '"<>\\^`|' or not char.isprintable()
                                       for char in sample):
            raise ValueError(f"invalid URL template {value!r}: write it percent-encoded (no spaces, quotes, "
                             "non-ASCII or control characters)")
        try:
            url = URL(sample)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"invalid URL template {value!r}: {exc}") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"invalid URL template {value!r}: expected http(s)://HOST/...{{device_id}}...")
        if url.user or url.password:
            raise ValueError(f"invalid URL template {value!r}: credentials in URLs are not allowed (use token)")
        return value


class CustomProviderConfig(Model):
    """A provider class of your own, implementing ``ztproxy.posture.PostureProvider``."""

    provider: str  # "package.module:Class", called with the options as keyword arguments
    options: dict[str, Any] = {}  # noqa: RUF012 -- pydantic copies mutable defaults

    @field_validator("provider")
    @classmethod
    def _importable(cls, value: str) -> str:
        if not callable(resolve(value, what="provider")):
            raise ValueError(f"{value!r} is not a class")
        return value


class DevicesConfig(Model):
    """No provider configured: requests carry no device, and device criteria fail closed."""

    client_certificate: ClientCertificateConfig | None = None
    signed: SignedPostureConfig | None = None
    inventory: InventoryConfig | None = None
    http: HttpPostureConfig | None = None
    custom: tuple[CustomProviderConfig, ...] = ()

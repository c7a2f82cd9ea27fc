"""Identity providers: the OpenID Providers users sign in with, and what counts as MFA.

This module imports no aiohttp.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from pydantic import field_validator, model_validator

from ztproxy.config.presets import resolve_preset, with_defaults
from ztproxy.config.presets.entra import EntraOptions
from ztproxy.config.presets.google import GoogleOptions
from ztproxy.config.values import ByteSize, Duration, IssuerUrl, Model, Name

DEFAULT_SCOPES = ("openid", "email", "profile")
DEFAULT_MAX_RESPONSE = 1024 * 1024
# RFC 8176 authentication method references that mean more than one factor was used.
DEFAULT_MFA_AMR = ("mfa", "otp", "hwk", "swk", "sc", "fpt", "face", "iris", "retina", "vbm", "webauthn")
DEFAULT_ALGORITHMS = ("RS256", "PS256", "ES256", "EdDSA")
DEFAULT_HTTP_TIMEOUT = 10.0
DEFAULT_METADATA_TTL = 3600.0
DEFAULT_JWKS_REFETCH_COOLDOWN = 30.0
# Asymmetric JWS algorithms only: HS* would let anyone who knows the client secret forge tokens
# (and invites RS/HS confusion); "none" is never acceptable (OIDC Core 3.1.3.7).
_ALLOWED_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
                                 "ES256", "ES384", "ES512", "EdDSA"})
_PROVIDER_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")


class MfaConfig(Model):
    """How to ask the IdP for a second factor, and how to recognise one in a token."""

    acr_values: tuple[Name, ...] = ()  # requested (as an essential acr claim) on step-up
    accepted_acr: tuple[Name, ...] = ()  # acr values that mean MFA; default: acr_values
    accepted_amr: tuple[Name, ...] = DEFAULT_MFA_AMR  # amr values that mean MFA

    @property
    def mfa_acr(self) -> frozenset[str]:
        return frozenset(self.accepted_acr or self.acr_values)


def assertion_algorithm(pem: str) -> str:
    """The JWS algorithm a client assertion key signs with; ValueError for a key that cannot sign one."""
    try:
        key = load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError("not a PEM private key without a passphrase") from exc
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size >= 2048:
        return "RS256"
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
        return "ES256"
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "EdDSA"
    raise ValueError("use an RSA (2048 bits or more), EC P-256 or Ed25519 key")


class IdentityProviderConfig(Model):
    name: str = "default"
    # The quirks of a known IdP (ztproxy.config.presets): defaults for the keys left out, and checks.
    preset: str | None = None
    entra: EntraOptions | None = None  # options of preset entra
    google: GoogleOptions | None = None  # options of preset google
    issuer: IssuerUrl
    client_id: Name
    client_secret: str | None = None  # or client_secret_file; None: a public client (PKCE only)
    token_endpoint_auth_method: Literal["client_secret_basic", "client_secret_post", "private_key_jwt",
                                        "tls_client_auth", "none"] = "client_secret_basic"
    # private_key_jwt (RFC 7523): the PEM private key that signs the client assertion (client_assertion_key_file).
    client_assertion_key: str | None = None
    # tls_client_auth (RFC 8705): the client certificate (PEM) and its key shown to the token endpoint.
    tls_client_cert_file: str | None = None
    tls_client_key_file: str | None = None
    scopes: tuple[Name, ...] = DEFAULT_SCOPES
    groups_claim: str = "groups"
    mfa: MfaConfig = MfaConfig()
    algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS  # accepted ID token signature algorithms
    use_userinfo: bool = True  # fetch userinfo after login and at every refresh
    # Keep the ID token with the session, for RP-initiated logout's id_token_hint (~1 KB a session).
    logout_id_token_hint: bool = False
    http_timeout: Duration = DEFAULT_HTTP_TIMEOUT
    metadata_ttl: Duration = DEFAULT_METADATA_TTL  # discovery document and JWKS cached this long
    jwks_refetch_cooldown: Duration = DEFAULT_JWKS_REFETCH_COOLDOWN  # unknown kid: refetch at most this often
    clock_skew: Duration = 60.0
    max_response: ByteSize = DEFAULT_MAX_RESPONSE  # each answer of the IdP (discovery, JWKS, token, userinfo)

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        """The preset's defaults for the keys the entry leaves out; the issuer as compared."""
        if not isinstance(data, dict):
            return data
        name = data.get("preset")
        try:
            preset = resolve_preset(name) if isinstance(name, str) else None
        except ValueError:
            preset = None  # reported at preset by its validator
        if preset is not None:
            data = with_defaults(preset, data)
        issuer = data.get("issuer")
        if isinstance(issuer, str) and not (preset is not None and preset.keep_issuer_slash):
            # The generic provider has always read "https://idp/" as "https://idp".
            data = {**data, "issuer": issuer.rstrip("/")}
        return data

    @field_validator("preset")
    @classmethod
    def _check_preset(cls, value: str | None) -> str | None:
        if value is not None:
            resolve_preset(value)
        return value

    @field_validator("client_assertion_key")
    @classmethod
    def _check_assertion_key(cls, value: str | None) -> str | None:
        if value is not None:
            assertion_algorithm(value)  # the key itself is never repeated in a message
        return value

    @model_validator(mode="after")
    def _method_has_what_it_needs(self) -> IdentityProviderConfig:
        method = self.token_endpoint_auth_method
        if method == "private_key_jwt" and self.client_assertion_key is None:
            raise ValueError("token_endpoint_auth_method private_key_jwt needs client_assertion_key_file "
                             "(the PEM private key whose public key the IdP has registered)")
        if method == "tls_client_auth" and not (self.tls_client_cert_file and self.tls_client_key_file):
            raise ValueError("token_endpoint_auth_method tls_client_auth needs tls_client_cert_file and "
                             "tls_client_key_file (the client certificate the IdP has registered, and its key)")
        return self

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not _PROVIDER_NAME.fullmatch(value):
            raise ValueError(f"invalid provider name {value!r}: use up to 32 lowercase letters, digits, '_' and '-'")
        return value

    @field_validator("scopes")
    @classmethod
    def _openid_scope(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if "openid" not in value:
            raise ValueError("scopes must include 'openid' (this is an OpenID Connect login)")
        return value

    @field_validator("algorithms")
    @classmethod
    def _check_algorithms(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return cls.check_algorithms(value)

    @staticmethod
    def check_algorithms(value: tuple[str, ...]) -> tuple[str, ...]:
        """Asymmetric JWS algorithms only, at least one (token issuers share the rule)."""
        bad = [alg for alg in value if alg not in _ALLOWED_ALGORITHMS]
        if bad:
            raise ValueError(f"unsupported token signature algorithm(s) {', '.join(map(repr, bad))}: "
                             f"use asymmetric ones such as {', '.join(DEFAULT_ALGORITHMS)}")
        if not value:
            raise ValueError("at least one algorithm is required")
        return value

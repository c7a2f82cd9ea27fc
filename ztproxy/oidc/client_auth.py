"""How the proxy proves who it is at the IdP's token endpoint.

- ``client_secret_basic`` (the default) and ``client_secret_post``: RFC 6749 2.3.1;
- ``private_key_jwt``: a short-lived JWT signed with the proxy's own key (RFC 7523 2.2,
  OIDC Core 9), so no shared secret exists at all;
- ``tls_client_auth``: a client certificate on the TLS connection (RFC 8705 2.1), sent to
  the token endpoint's ``mtls_endpoint_aliases`` entry when the IdP publishes one;
- ``none``: a public client (PKCE alone).

Built once per provider from its configuration; ``credentials`` adds what one token
request needs. No aiohttp here: the caller posts the form.
"""

from __future__ import annotations

import base64
import secrets
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from joserfc import jwt
from joserfc.jwk import ECKey, OKPKey, RSAKey

from ztproxy.config.identity import IdentityProviderConfig, assertion_algorithm

# RFC 7523 2.2: the client_assertion_type of a JWT bearer assertion.
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
_ASSERTION_LIFETIME = 60  # seconds: one request's worth
_Key = RSAKey | ECKey | OKPKey


@dataclass(frozen=True)
class ClientAuthentication:
    method: str
    client_id: str
    secret: str | None
    assertion_key: _Key | None = None
    assertion_alg: str = ""
    tls: ssl.SSLContext | None = None

    @classmethod
    def from_config(cls, config: IdentityProviderConfig) -> ClientAuthentication:
        method = config.token_endpoint_auth_method
        key, alg = (None, "") if config.client_assertion_key is None else signing_key(config.client_assertion_key)
        tls = None
        if method == "tls_client_auth" and config.tls_client_cert_file and config.tls_client_key_file:
            tls = ssl.create_default_context()
            tls.load_cert_chain(config.tls_client_cert_file, config.tls_client_key_file)
        return cls(method=method, client_id=config.client_id, secret=config.client_secret, assertion_key=key,
                   assertion_alg=alg, tls=tls)

    def token_endpoint(self, metadata: Mapping[str, Any]) -> str:
        """Where token requests go: with a client certificate, the IdP's mTLS alias if it has one (RFC 8705 5)."""
        if self.method == "tls_client_auth":
            aliases = metadata.get("mtls_endpoint_aliases")
            if isinstance(aliases, Mapping) and isinstance(aliases.get("token_endpoint"), str):
                return str(aliases["token_endpoint"])
        return str(metadata["token_endpoint"])

    def credentials(self, form: dict[str, str], headers: dict[str, str], *, endpoint: str, now: float) -> None:
        """Add this client's authentication to one token request (``form`` and ``headers``, in place)."""
        method = self.method
        if method == "client_secret_basic" and self.secret is not None:
            # RFC 6749 2.3.1: form-encode id and secret before the Basic encoding.
            headers["Authorization"] = _basic(quote(self.client_id, safe=""), quote(self.secret, safe=""))
            return
        form["client_id"] = self.client_id  # RFC 8705 2.1.1 and RFC 7523 3 name the client too
        if method == "client_secret_post" and self.secret is not None:
            form["client_secret"] = self.secret
        elif method == "private_key_jwt" and self.assertion_key is not None:
            form["client_assertion_type"] = JWT_BEARER
            form["client_assertion"] = self._assertion(endpoint, now)

    def _assertion(self, endpoint: str, now: float) -> str:
        # RFC 7523 3 / OIDC Core 9: iss and sub are the client, aud the token endpoint, jti single-use.
        issued = int(now)
        claims = {"iss": self.client_id, "sub": self.client_id, "aud": endpoint, "jti": secrets.token_urlsafe(16),
                  "iat": issued, "exp": issued + _ASSERTION_LIFETIME}
        assert self.assertion_key is not None
        return jwt.encode({"alg": self.assertion_alg, "typ": "JWT"}, claims, self.assertion_key,
                          algorithms=[self.assertion_alg])


def signing_key(pem: str) -> tuple[_Key, str]:
    """The key in ``pem`` and the algorithm it signs with (the config has checked it can sign)."""
    algorithm = assertion_algorithm(pem)
    if algorithm == "RS256":
        return RSAKey.import_key(pem), algorithm
    if algorithm == "ES256":
        return ECKey.import_key(pem), algorithm
    return OKPKey.import_key(pem), algorithm


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")

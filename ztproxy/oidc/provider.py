"""One OpenID Provider as ztproxy talks to it: discovery, keys, token and userinfo endpoints.

Discovery and the JWKS are cached for ``metadata_ttl``; a token signed with a key the
cached set lacks refetches the JWKS at most once per ``jwks_refetch_cooldown`` (a rotation
at the IdP is picked up at once, a flood of forged kids costs the IdP nothing). Every
failure to reach the IdP, or an answer that makes no sense, becomes
``IdentityProviderUnavailable`` here; a refresh the IdP refuses becomes ``RefreshRejected``.
Every call also tells the provider's :class:`~ztproxy.oidc.reachability.Reachability`
whether the IdP answered, and ``check_reachable`` is its cheap check (the discovery URL).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import structlog
from authlib.oidc.discovery import OpenIDProviderMetadata
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from ztproxy.config.identity import IdentityProviderConfig
from ztproxy.config.presets import preset_of
from ztproxy.errors import IdentityProviderUnavailable, SignInMisconfigured
from ztproxy.fetch import BodyTooLarge, read_bounded
from ztproxy.oidc.client_auth import ClientAuthentication
from ztproxy.oidc.groups import groups_source
from ztproxy.oidc.reachability import CURRENT_FOR, Reachability
from ztproxy.oidc.tokens import (
    IdTokenClaims,
    LogoutTokenClaims,
    UnknownSigningKey,
    validate_id_token,
    validate_logout_token,
)

_log = structlog.get_logger("ztproxy.oidc")

_INVALID_CLIENT_REMEDY = ("check client_id and client_secret against the IdP's registration; an IdP that does not "
                          "form-decode the Basic credentials (RFC 6749 2.3.1) wants "
                          "token_endpoint_auth_method: client_secret_post")


class RefreshRejected(Exception):
    """The IdP refused the refresh token (invalid_grant...): the session must end."""


@dataclass(frozen=True, slots=True)
class TokenResponse:
    id_token: str | None
    access_token: str | None
    refresh_token: str | None


class Provider:
    def __init__(self, config: IdentityProviderConfig, http: aiohttp.ClientSession) -> None:
        self.config = config
        self.name = config.name
        self._http = http
        self.preset = preset_of(config)
        self._client = ClientAuthentication.from_config(config)
        self._groups = groups_source(config, http)
        self._timeout = aiohttp.ClientTimeout(total=config.http_timeout)
        self._metadata: OpenIDProviderMetadata | None = None
        self._metadata_at = float("-inf")
        self._keys: KeySet | None = None
        self._keys_at = float("-inf")
        self._last_refetch = float("-inf")  # by an unknown kid: at most once per cooldown
        self._lock = asyncio.Lock()
        # A check that outlasts the view it feeds would leave it stale: bounded by CURRENT_FOR.
        self._check_timeout = aiohttp.ClientTimeout(total=min(config.http_timeout, CURRENT_FOR))
        self.reachability = Reachability(self.check_reachable)

    # --- discovery and keys ---------------------------------------------------------------

    async def metadata(self) -> OpenIDProviderMetadata:
        """The discovery document, fetched again after ``metadata_ttl``."""
        if not self._metadata_due():
            assert self._metadata is not None
            return self._metadata
        async with self._lock:
            if self._metadata_due():  # another task may have fetched it meanwhile
                await self._fetch_metadata_locked()
        assert self._metadata is not None
        return self._metadata

    def _metadata_due(self) -> bool:
        return self._metadata is None or time.monotonic() - self._metadata_at > self.config.metadata_ttl

    async def check_reachable(self) -> bool:
        """One cheap request (the discovery document, read whole): did the IdP answer it?

        The first failure after an answer is logged as ``idp_unreachable`` with its reason
        (a refused connection, an untrusted certificate, a 5xx), so ops learn why sign-ins get
        the 503 page; the checks repeating it during the outage log at debug.
        """
        url = self._discovery_url()
        try:
            async with self._http.get(url, headers={"Accept": "application/json"},
                                      timeout=self._check_timeout) as response:
                await read_bounded(response, self.config.max_response)
                if response.status < 500:
                    return True
                reason = f"status {response.status}"
        except (aiohttp.ClientError, TimeoutError, BodyTooLarge) as exc:
            reason = repr(exc)[:200]
        if self.reachability.last_known_reachable:
            _log.warning("idp_unreachable", provider=self.name, url=url[:200], error=reason)
        else:
            _log.debug("idp_check_failed", provider=self.name, error=reason)
        return False

    def _discovery_url(self) -> str:
        # OIDC Discovery 4: a terminating "/" of the issuer is removed before the well-known path.
        return f"{self.config.issuer.rstrip('/')}/.well-known/openid-configuration"

    def _check_metadata(self, document: Mapping[str, Any]) -> OpenIDProviderMetadata:
        metadata = OpenIDProviderMetadata(document)
        try:
            metadata.validate()
        except ValueError as exc:
            _log.error("idp_metadata_invalid", provider=self.name, error=str(exc))
            raise IdentityProviderUnavailable() from exc
        # OIDC Discovery 4.3: the issuer in the document must be exactly the one we asked.
        if metadata["issuer"] != self.config.issuer:
            _log.error("idp_issuer_mismatch", provider=self.name, configured=self.config.issuer,
                       advertised=str(metadata["issuer"])[:200])
            raise IdentityProviderUnavailable()
        methods = metadata.get("code_challenge_methods_supported")
        if isinstance(methods, list) and "S256" not in methods:
            _log.warning("idp_pkce_s256_not_advertised", provider=self.name)
        return metadata

    async def keys(self, *, refetch: bool = False) -> KeySet:
        """The IdP's signing keys; ``refetch`` (an unknown kid) reloads them, once per cooldown."""
        if not self._keys_due(refetch):
            assert self._keys is not None
            return self._keys
        async with self._lock:
            if self._keys_due(refetch):
                if refetch:
                    self._last_refetch = time.monotonic()
                metadata = self._metadata or await self._fetch_metadata_locked()
                document = await self._get_json(str(metadata["jwks_uri"]))
                try:
                    self._keys = KeySet.import_key_set(document)  # type: ignore[arg-type]
                except (JoseError, ValueError, TypeError, KeyError) as exc:
                    _log.error("idp_jwks_invalid", provider=self.name, error=str(exc)[:200])
                    raise IdentityProviderUnavailable() from exc
                self._keys_at = time.monotonic()
        assert self._keys is not None
        return self._keys

    def _keys_due(self, refetch: bool) -> bool:
        now = time.monotonic()
        return self._keys is None or now - self._keys_at > self.config.metadata_ttl \
            or (refetch and now - self._last_refetch >= self.config.jwks_refetch_cooldown)

    async def _fetch_metadata_locked(self) -> OpenIDProviderMetadata:
        document = await self._get_json(self._discovery_url())
        self._metadata = self._check_metadata(document)
        self._metadata_at = time.monotonic()
        return self._metadata

    # --- tokens ---------------------------------------------------------------------------

    async def validate_id_token(self, token: str, *, nonce: str, max_age: float | None,
                                access_token: str | None) -> IdTokenClaims:
        async def attempt(keys: KeySet) -> IdTokenClaims:
            return validate_id_token(token, keys=keys, issuer=self.config.issuer, client_id=self.config.client_id,
                                     algorithms=self.config.algorithms, nonce=nonce, now=time.time(),
                                     leeway=self.config.clock_skew, max_age=max_age, access_token=access_token)
        try:
            return await attempt(await self.keys())
        except UnknownSigningKey:
            return await attempt(await self.keys(refetch=True))

    async def validate_logout_token(self, token: str) -> LogoutTokenClaims:
        def attempt(keys: KeySet) -> LogoutTokenClaims:
            return validate_logout_token(token, keys=keys, issuer=self.config.issuer, client_id=self.config.client_id,
                                         algorithms=self.config.algorithms, now=time.time(),
                                         leeway=self.config.clock_skew)
        try:
            return attempt(await self.keys())
        except UnknownSigningKey:
            return attempt(await self.keys(refetch=True))

    async def exchange_code(self, code: str, *, verifier: str, redirect_uri: str) -> TokenResponse:
        return await self._token_request({"grant_type": "authorization_code", "code": code,
                                          "redirect_uri": redirect_uri, "code_verifier": verifier})

    async def refresh(self, refresh_token: str) -> TokenResponse:
        return await self._token_request({"grant_type": "refresh_token", "refresh_token": refresh_token},
                                         refreshing=True)

    async def userinfo(self, access_token: str) -> dict[str, Any]:
        metadata = await self.metadata()
        endpoint = metadata.get("userinfo_endpoint")
        if not endpoint:
            return {}
        document = await self._get_json(str(endpoint), headers={"Authorization": f"Bearer {access_token}"},
                                        refused=(401, 403))
        return dict(document)

    async def groups(self, access_token: str | None, id_claims: Mapping[str, Any] | None) -> tuple[str, ...] | None:
        """The user's groups from the preset's source (Graph...); None: the claims' groups apply."""
        if self._groups is None:
            return None
        return await self._groups.groups(access_token, id_claims)

    async def _token_request(self, form: dict[str, str], *, refreshing: bool = False) -> TokenResponse:
        metadata = await self.metadata()
        status, answer = await self._post(self._client.token_endpoint(metadata), form, "token")
        if status != 200:
            error = str(answer.get("error", ""))[:100]
            _log.info("idp_token_refused", provider=self.name, status=status, error=error,
                      grant=form["grant_type"])
            if refreshing and 400 <= status < 500:
                raise RefreshRejected(error)
            raise IdentityProviderUnavailable() if status >= 500 else TokenRefused(error)
        return TokenResponse(id_token=_str_or_none(answer.get("id_token")),
                             access_token=_str_or_none(answer.get("access_token")),
                             refresh_token=_str_or_none(answer.get("refresh_token")))

    async def introspect(self, token: str) -> Mapping[str, Any]:
        """The issuer's word on an access token (RFC 7662), asked as the proxy's own client."""
        metadata = await self.metadata()
        endpoint = metadata.get("introspection_endpoint")
        if not isinstance(endpoint, str):
            _log.error("idp_no_introspection_endpoint", provider=self.name)
            raise IdentityProviderUnavailable()
        status, answer = await self._post(endpoint, {"token": token, "token_type_hint": "access_token"},
                                          "introspection")
        if status != 200:
            _log.warning("idp_introspection_refused", provider=self.name, status=status,
                         error=str(answer.get("error", ""))[:100])
            raise IdentityProviderUnavailable()
        return answer

    async def _post(self, endpoint: str, form: dict[str, str], what: str) -> tuple[int, dict[str, Any]]:
        """A form POSTed as the proxy's client (its authentication added): the status and JSON answer."""
        data = dict(form)
        headers = {"Accept": "application/json"}
        client = self._client
        client.credentials(data, headers, endpoint=endpoint, now=time.time())
        try:
            async with self._http.post(endpoint, data=data, headers=headers, timeout=self._timeout,
                                       ssl=client.tls if client.tls is not None else True) as response:
                body = await self._read(response, what)
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.reachability.failed()
            _log.warning("idp_unreachable", provider=self.name, endpoint=what, error=repr(exc)[:200])
            raise IdentityProviderUnavailable() from exc
        self._heard(status)
        try:
            answer = orjson.loads(body)
        except orjson.JSONDecodeError:
            answer = None
        if not isinstance(answer, dict):
            _log.warning("idp_bad_token_response", provider=self.name, endpoint=what, status=status)
            raise IdentityProviderUnavailable()
        if status != 200 and str(answer.get("error", "")) == "invalid_client":
            # RFC 6749 5.2: the IdP refuses the proxy's own authentication, not the user's code.
            _log.error("invalid_client", provider=self.name, status=status, method=client.method,
                       remedy=_INVALID_CLIENT_REMEDY)
            raise SignInMisconfigured()
        return status, answer

    async def _get_json(self, url: str, headers: Mapping[str, str] | None = None,
                        refused: tuple[int, ...] = ()) -> Mapping[str, Any]:
        try:
            async with self._http.get(url, headers={"Accept": "application/json", **(headers or {})},
                                      timeout=self._timeout) as response:
                body = await self._read(response, url)
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.reachability.failed()
            _log.warning("idp_unreachable", provider=self.name, url=url[:200], error=repr(exc)[:200])
            raise IdentityProviderUnavailable() from exc
        self._heard(status)
        if status in refused:
            raise TokenRefused(f"status {status}")
        if status != 200:
            _log.warning("idp_bad_status", provider=self.name, url=url[:200], status=status)
            raise IdentityProviderUnavailable()
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise IdentityProviderUnavailable() from exc
        if not isinstance(document, dict):
            raise IdentityProviderUnavailable()
        return document

    def _heard(self, status: int) -> None:
        # A 5xx is an IdP that cannot serve a sign-in either; anything else is an answer.
        if status >= 500:
            self.reachability.failed()
        else:
            self.reachability.answered()

    async def _read(self, response: aiohttp.ClientResponse, what: str) -> bytes:
        """The whole answer, however many segments it came in, up to ``max_response``."""
        try:
            return await read_bounded(response, self.config.max_response)
        except BodyTooLarge as exc:
            _log.warning("idp_response_too_large", provider=self.name, url=what[:200],
                         limit=self.config.max_response, error=str(exc))
            raise IdentityProviderUnavailable() from exc


class TokenRefused(Exception):
    """The IdP refused a code exchange (invalid_grant: a replayed or expired code...)."""


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) and value else None

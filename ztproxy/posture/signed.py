"""The ``signed`` provider: device posture from a short-lived JWT an endpoint agent sends.

The token travels in a request header (``X-Device-Posture`` by default) and counts only when:

- its signature verifies with the configured public key, or a key of the JWKS at ``jwks_url``
  (found by ``kid``; an unknown kid refetches the JWKS at most once per cooldown), with one
  of the pinned ``algorithms`` (asymmetric only);
- it carries ``exp`` and ``iat``, is not expired and not issued in the future (``clock_skew``
  tolerated), lives at most ``max_lifetime`` (``exp - iat``), and is not used before ``nbf``;
- ``iss`` equals ``issuer`` and ``aud`` contains ``audience``, when those are configured;
- it names a device: the ``device_id`` claim, else ``sub``; when a client certificate
  established the device, it must be that same id (else the token is ignored), and with
  ``require_client_certificate`` a token without such a certificate is ignored;
- its posture claims form a valid posture record (``ztproxy.posture.record``: ``managed``,
  ``disk_encrypted``, ``platform``, ``os_version``, ``score``, ``owner``, ``last_seen``,
  ``revoked``...); ``last_seen`` defaults to ``iat`` when the token reports any of them.
  Other claims are ignored.

A token that fails any check gives nothing (a ``posture_token_rejected`` event says why): the
device stays as it was. ``revoked: true`` in a valid token gives no device at all. Verified
tokens are remembered until they expire, so an agent's token costs one signature check.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
import structlog
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from joserfc import jwt
from joserfc.errors import InvalidKeyIdError, JoseError
from joserfc.jwk import ECKey, KeySet, OKPKey, RSAKey

from ztproxy.config.devices import SignedPostureConfig
from ztproxy.config.schema import Config
from ztproxy.fetch import FetchFailed, get_json, json_client
from ztproxy.policy.model import Device
from ztproxy.posture.provider import PostureQuery
from ztproxy.posture.record import PostureRecord, parse_record, valid_device_id

log = structlog.get_logger("ztproxy.posture")

_MAX_TOKEN = 16 * 1024
_MAX_JWKS = 256 * 1024
_CACHE_SIZE = 4096
_POSTURE_CLAIMS = tuple(PostureRecord.model_fields)

Key = ECKey | RSAKey | OKPKey


@dataclass(frozen=True, slots=True)
class _Verified:
    device_id: str
    record: PostureRecord
    claims: dict[str, Any]  # checked against the clock at every use


class _Rejected(Exception):
    """The token gives nothing; the message says why."""


def _within(now: float, since: float, seconds: float) -> bool:
    return 0 <= now - since < seconds  # a clock set back counts as "time is up"


def _import_pem(pem: str) -> Key:
    public_key = load_pem_public_key(pem.encode())
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return ECKey.import_key(pem)
    if isinstance(public_key, rsa.RSAPublicKey):
        return RSAKey.import_key(pem)
    return OKPKey.import_key(pem)  # the schema admits EC, RSA and Ed25519/Ed448 keys only


class SignedPostureProvider:
    def __init__(self, settings: SignedPostureConfig) -> None:
        self._settings = settings
        self._header = settings.header
        self._algorithms = list(settings.algorithms)
        self._key: Key | None = None if settings.public_key is None else _import_pem(settings.public_key)
        self._key_set: KeySet | None = None
        self._key_set_fetched = -1e18  # POSIX time of the last successful fetch
        self._key_set_tried = -1e18  # ... of the last attempt, for the refetch cooldown
        self._key_set_lock = asyncio.Lock()
        self._verified: OrderedDict[str, _Verified] = OrderedDict()
        self._session: aiohttp.ClientSession | None = None
        self._claim_options: dict[str, Any] = {"exp": {"essential": True}, "iat": {"essential": True}}
        if settings.issuer is not None:
            self._claim_options["iss"] = {"essential": True, "value": settings.issuer}  # RFC 7519 4.1.1
        if settings.audience is not None:
            self._claim_options["aud"] = {"essential": True, "value": settings.audience}  # RFC 7519 4.1.3

    @classmethod
    def from_config(cls, settings: SignedPostureConfig, config: Config) -> SignedPostureProvider:
        return cls(settings)

    async def start(self) -> None:
        if self._settings.jwks_url is not None:
            self._session = json_client(self._settings.http_timeout)

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def observe(self, query: PostureQuery, device: Device | None) -> Device | None:
        token = query.headers.get(self._header)
        if token is None:
            return device
        try:
            verified = await self._verify(token, query.now.timestamp())
            if device is None and self._settings.require_client_certificate:
                raise _Rejected("no client certificate names its device")
            if device is not None and device.id != verified.device_id:
                raise _Rejected(f"it is for another device than the certificate's ({device.id})")
        except _Rejected as exc:
            log.info("posture_token_rejected", reason=str(exc))
            return device
        return verified.record.apply(device or Device(id=verified.device_id))

    async def _verify(self, token: str, now: float) -> _Verified:
        verified = self._verified.get(token)
        if verified is None:
            verified = await self._check_signature(token, now)
            self._verified[token] = verified
            if len(self._verified) > _CACHE_SIZE:
                self._verified.popitem(last=False)
        try:
            self._check_claims(verified.claims, now)
        except _Rejected:
            self._verified.pop(token, None)
            raise
        return verified

    def _check_claims(self, claims: dict[str, Any], now: float) -> None:
        settings = self._settings
        registry = jwt.JWTClaimsRegistry(now=int(now), leeway=int(settings.clock_skew), **self._claim_options)
        try:
            registry.validate(claims)  # RFC 7519 4.1.4/4.1.5/4.1.6: exp, nbf, iat against now
        except JoseError as exc:
            raise _Rejected(f"{type(exc).__name__}: {exc}") from None
        if claims["exp"] - claims["iat"] > settings.max_lifetime:
            raise _Rejected(f"it lives longer than {settings.max_lifetime:g}s (exp - iat)")

    async def _check_signature(self, token: str, now: float) -> _Verified:
        if len(token) > _MAX_TOKEN:
            raise _Rejected(f"longer than {_MAX_TOKEN} characters")
        try:
            try:
                # RFC 8725 3.1: only the pinned algorithms, whatever the token's header says.
                claims = jwt.decode(token, await self._keys(now), algorithms=self._algorithms).claims
            except InvalidKeyIdError:
                claims = jwt.decode(token, await self._keys(now, unknown_kid=True), algorithms=self._algorithms).claims
        except (JoseError, ValueError, TypeError, KeyError) as exc:  # whatever a malformed token raises
            raise _Rejected(f"{type(exc).__name__}: {exc}") from None
        device_id = claims.get("device_id", claims.get("sub"))
        if not valid_device_id(device_id):
            raise _Rejected("it names no valid device id (device_id or sub)")
        posture = {name: claims[name] for name in _POSTURE_CLAIMS if name in claims}
        if posture and "last_seen" not in posture and isinstance(claims.get("iat"), int | float):
            posture["last_seen"] = datetime.fromtimestamp(claims["iat"], UTC)
        try:
            record = parse_record(posture)
        except ValueError as exc:
            raise _Rejected(f"invalid posture claims: {exc}") from None
        return _Verified(device_id, record, claims)

    async def _keys(self, now: float, *, unknown_kid: bool = False) -> Key | KeySet:
        if self._key is not None:
            return self._key
        settings = self._settings
        if self._key_set is not None and not unknown_kid and _within(now, self._key_set_fetched, settings.jwks_ttl):
            return self._key_set
        async with self._key_set_lock:  # concurrent requests share one fetch
            fresh = self._key_set is not None and _within(now, self._key_set_fetched, settings.jwks_ttl)
            # At most one fetch per cooldown, even when every token names an unknown kid.
            if (not fresh or unknown_kid) and not _within(now, self._key_set_tried, settings.jwks_refetch_cooldown):
                self._key_set_tried = now
                try:
                    self._key_set = await self._fetch_key_set()
                    self._key_set_fetched = now
                except _Rejected as exc:
                    log.warning("posture_keys_unavailable", url=settings.jwks_url, error=str(exc))
        if self._key_set is None:
            raise _Rejected("the posture keys (jwks_url) are unavailable")
        return self._key_set

    async def _fetch_key_set(self) -> KeySet:
        settings = self._settings
        if self._session is None or settings.jwks_url is None:
            raise _Rejected("the provider is not started")
        try:
            status, data = await get_json(self._session, settings.jwks_url, max_bytes=_MAX_JWKS)
        except FetchFailed as exc:
            raise _Rejected(str(exc)) from None
        if status != 200:
            raise _Rejected(f"the JWKS endpoint answered {status}")
        try:
            return KeySet.import_key_set(data)
        except (JoseError, ValueError, TypeError, KeyError, AttributeError) as exc:
            raise _Rejected(f"invalid JWKS: {type(exc).__name__}: {exc}") from None

"""The ``client_certificate`` provider: the device id from the TLS client certificate.

The listener asks for, and never requires, a client certificate (``server.tls.client_ca_file``,
see ``ztproxy.listener.ssl_context``). What TLS does with the certificate a client presents:

- none: the request is served, without a device;
- issued by the device CA, within its dates: verified; the id is read here;
- issued by the device CA but expired or not yet valid: TLS lets it through (the listener
  skips the date check, ``X509_V_FLAG_NO_CHECK_TIME``) and this provider refuses it against the
  request's clock, so the request is served without a device instead of the connection failing;
- issued by another CA: the server refuses it with the TLS alert ``unknown_ca`` and closes the
  connection (TLS 1.2: the handshake fails; TLS 1.3: the client's handshake completes, then
  the connection closes before any answer). The stdlib ``ssl`` module offers no verify
  callback to turn that into "no certificate", and sends no list of acceptable CAs (the
  CertificateRequest names none), so a client offering its user every certificate it has
  may pick a wrong one; it is served again once it connects without it. What a browser does
  then is its own choice (not tested here).

Because TLS skips the dates, this provider checks them for the certificate and for its issuer
in ``client_ca_file`` (which must therefore hold the CA that issues device certificates
directly, intermediates included). Rule for the id: the first URI subject alternative name
that starts with ``uri_prefix`` gives the id (the rest of the URI); without one, the subject's
common name (when ``common_name`` is on). "urn:device:mbp-42" gives "mbp-42". Two different
ids, or none, give no device. This module imports no aiohttp.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import structlog
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.x509.oid import NameOID

from ztproxy.config.devices import ClientCertificateConfig
from ztproxy.config.schema import Config
from ztproxy.errors import ConfigError, ConfigIssue
from ztproxy.policy.model import Device
from ztproxy.posture.provider import PostureQuery
from ztproxy.posture.record import valid_device_id

log = structlog.get_logger("ztproxy.posture")

_CACHE_SIZE = 4096  # parsed certificates kept, by DER


def peer_certificate(transport: asyncio.BaseTransport | None) -> bytes | None:
    """The DER client certificate of a TLS connection (``request.transport``), if it sent one.

    TLS verified its chain to ``client_ca_file`` but NOT its validity dates: check them
    against the request's clock (``ClientCertificateProvider`` does) before trusting it.
    """
    if transport is None:
        return None
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    return der if isinstance(der, bytes) else None


class _NoDeviceId(Exception):
    """The certificate names no usable device id; the message says why."""


@dataclass(frozen=True, slots=True)
class _Parsed:
    device_id: str
    not_before: datetime  # the validity of the certificate and of its issuer, intersected
    not_after: datetime


class ClientCertificateProvider:
    def __init__(self, *, ca_certificates: list[x509.Certificate], uri_prefix: str, common_name: bool) -> None:
        self._cas = ca_certificates
        self._uri_prefix = uri_prefix
        self._common_name = common_name
        self._parsed: dict[bytes, _Parsed | str] = {}  # DER -> its id, or why it has none

    @classmethod
    def from_config(cls, settings: ClientCertificateConfig, config: Config) -> ClientCertificateProvider:
        tls = config.server.tls
        if tls is None or tls.client_ca_file is None:
            raise ConfigError([ConfigIssue("devices.client_certificate",
                                           "needs server.tls.client_ca_file (the CA of device certificates)")])
        try:
            cas = x509.load_pem_x509_certificates(Path(tls.client_ca_file).read_bytes())
        except (OSError, ValueError) as exc:
            problem = f"cannot read CA certificates from {tls.client_ca_file!r}: {exc}"
            raise ConfigError([ConfigIssue("server.tls.client_ca_file", problem)]) from None
        return cls(ca_certificates=cas, uri_prefix=settings.uri_prefix, common_name=settings.common_name)

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def observe(self, query: PostureQuery, device: Device | None) -> Device | None:
        der = query.peer_certificate
        if der is None:
            return device
        parsed = self._parsed.get(der)
        if parsed is None:
            parsed = self._parse(der)
            if len(self._parsed) >= _CACHE_SIZE:
                del self._parsed[next(iter(self._parsed))]
            self._parsed[der] = parsed
        if isinstance(parsed, str):
            log.info("device_certificate_rejected", reason=parsed)
            return None
        # RFC 5280 4.1.2.5: the validity period includes both dates. TLS did not check them.
        if not parsed.not_before <= query.now <= parsed.not_after:
            log.info("device_certificate_rejected", reason="outside its validity period",
                     device_id=parsed.device_id, not_before=parsed.not_before.isoformat(),
                     not_after=parsed.not_after.isoformat())
            return None
        if device is not None and device.id != parsed.device_id:
            log.warning("device_certificate_rejected", reason="another provider named another device",
                        device_id=parsed.device_id, other=device.id)
            return None
        return device if device is not None else Device(id=parsed.device_id)

    def _parse(self, der: bytes) -> _Parsed | str:
        try:
            cert = x509.load_der_x509_certificate(der)
            issuer = self._issuer_of(cert)
            device_id = self._device_id(cert)
        except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as exc:
            return f"unreadable certificate: {exc}"
        except _NoDeviceId as exc:
            return str(exc)
        if issuer is None:
            return "not issued directly by a CA in client_ca_file"
        return _Parsed(device_id, max(cert.not_valid_before_utc, issuer.not_valid_before_utc),
                       min(cert.not_valid_after_utc, issuer.not_valid_after_utc))

    def _issuer_of(self, cert: x509.Certificate) -> x509.Certificate | None:
        for ca in self._cas:
            if ca.subject != cert.issuer:
                continue
            try:
                cert.verify_directly_issued_by(ca)
            except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
                continue
            return ca
        return None

    def _device_id(self, cert: x509.Certificate) -> str:
        try:
            names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            uris = names.get_values_for_type(x509.UniformResourceIdentifier)
        except x509.ExtensionNotFound:
            uris = []
        ids = {uri[len(self._uri_prefix):] for uri in uris if uri.startswith(self._uri_prefix)}
        if not ids and self._common_name:
            ids = {str(attribute.value) for attribute in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)}
        if len(ids) > 1:
            raise _NoDeviceId("the certificate names several device ids")
        if not ids:
            raise _NoDeviceId(f"no URI name starting with {self._uri_prefix!r}"
                              + (" and no common name" if self._common_name else ""))
        device_id = ids.pop()
        if not valid_device_id(device_id):
            raise _NoDeviceId("the device id is empty, too long or not printable")
        return device_id

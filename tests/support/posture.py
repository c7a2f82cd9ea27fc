"""Test fixtures for device posture: a PKI made with ``cryptography`` and a posture-token signer.

- ``device_pki``: a device CA, another CA, and a server certificate for 127.0.0.1/localhost
  (from its own CA), written to ``tmp_path``; ``device_pki.device(...)`` issues device
  certificates (valid, expired, from another CA, with a URI SAN and/or a CN);
  ``device_pki.client_context(cert)`` is a client TLS context presenting one.
- ``posture_signer``: an ES256 key with a kid that signs posture JWTs; its public key as PEM
  and as a JWKS.
"""

from __future__ import annotations

import ipaddress
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from joserfc import jwt
from joserfc.jwk import ECKey

DAY = timedelta(days=1)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@dataclass(frozen=True)
class Issued:
    """A certificate, its key, and both written as PEM files."""

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    cert_file: Path
    key_file: Path

    @property
    def der(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.DER)


class CertificateAuthority:
    def __init__(self, name: str, directory: Path, *, not_before: datetime | None = None,
                 not_after: datetime | None = None, path_length: int | None = 0) -> None:
        now = datetime.now(UTC)
        self.directory = directory
        self.slug = name.lower().replace(" ", "-")
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.certificate = (
            x509.CertificateBuilder().subject_name(self.name).issuer_name(self.name)
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(not_before or now - DAY).not_valid_after(not_after or now + 365 * DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False),
                           critical=True)
            .sign(self.key, hashes.SHA256()))
        self.cert_file = directory / f"{self.slug}.pem"
        self.cert_file.write_bytes(self.certificate.public_bytes(serialization.Encoding.PEM))
        self._count = 0

    def issue(self, *, common_name: str | None = None, uris: Sequence[str] = (), dns_names: Sequence[str] = (),
              ips: Sequence[str] = (), server: bool = False, not_before: datetime | None = None,
              not_after: datetime | None = None,
              extensions: Sequence[tuple[x509.ExtensionType, bool]] = ()) -> Issued:
        """A certificate for a fresh key, with ``extensions`` as (value, critical) besides the usual ones."""
        now = datetime.now(UTC)
        key = ec.generate_private_key(ec.SECP256R1())
        subject = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)] if common_name is not None else []
        builder = (x509.CertificateBuilder().subject_name(x509.Name(subject)).issuer_name(self.name)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(not_before or now - DAY).not_valid_after(not_after or now + 30 * DAY)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server
                                                         else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
        names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(uri) for uri in uris]
        names += [x509.DNSName(name) for name in dns_names]
        names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical=critical)
        certificate = builder.sign(self.key, hashes.SHA256())
        self._count += 1
        stem = self.directory / f"{self.slug}-{self._count}"
        cert_file, key_file = stem.with_suffix(".crt"), stem.with_suffix(".key")
        cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(_pem_key(key))
        return Issued(certificate, key, cert_file, key_file)


class DevicePki:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.device_ca = CertificateAuthority("Device CA", directory)
        self.other_ca = CertificateAuthority("Other CA", directory)
        self.server_ca = CertificateAuthority("Server CA", directory)
        self.server = self.server_ca.issue(common_name="localhost", dns_names=["localhost"], ips=["127.0.0.1"],
                                           server=True)

    def device(self, device_id: str = "dev-1", *, uri: str | None = "urn:device:{id}", common_name: bool = True,
               ca: CertificateAuthority | None = None, not_before: datetime | None = None,
               not_after: datetime | None = None) -> Issued:
        """A device certificate: URI SAN (``{id}`` replaced) and/or CN naming ``device_id``."""
        return (ca or self.device_ca).issue(
            common_name=device_id if common_name else None,
            uris=[uri.format(id=device_id)] if uri is not None else [],
            not_before=not_before, not_after=not_after)

    def expired(self, device_id: str = "dev-1") -> Issued:
        now = datetime.now(UTC)
        return self.device(device_id, not_before=now - 10 * DAY, not_after=now - DAY)

    def tls_yaml(self, *, client_ca: bool = True) -> str:
        """The ``server.tls`` mapping for a config, as one YAML flow line."""
        ca = f", client_ca_file: '{self.device_ca.cert_file}'" if client_ca else ""
        return f"{{cert_file: '{self.server.cert_file}', key_file: '{self.server.key_file}'{ca}}}"

    def client_context(self, certificate: Issued | None = None, *,
                       max_version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.server_ca.cert_file))
        if certificate is not None:
            context.load_cert_chain(certificate.cert_file, certificate.key_file)
        if max_version is not None:
            context.maximum_version = max_version
        return context


@pytest.fixture
def device_pki(tmp_path: Path) -> DevicePki:
    directory = tmp_path / "pki"
    directory.mkdir()
    return DevicePki(directory)


class PostureSigner:
    """Signs posture tokens as an endpoint agent's posture service would."""

    def __init__(self, kid: str = "posture-1") -> None:
        self.kid = kid
        self.private_key = ec.generate_private_key(ec.SECP256R1())
        self.key = ECKey.import_key(_pem_key(self.private_key))
        self.public_pem = self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()

    def jwks(self) -> dict[str, Any]:
        public = ECKey.import_key(self.public_pem).as_dict(private=False)
        return {"keys": [{**public, "kid": self.kid, "alg": "ES256", "use": "sig"}]}

    def token(self, device_id: str | None = "dev-1", *, now: datetime | None = None, lifetime: float = 120,
              header: dict[str, Any] | None = None, **claims: Any) -> str:
        """A signed posture JWT; ``claims`` add to or replace (``None`` removes) the defaults."""
        issued = int((now or datetime.now(UTC)).timestamp())
        payload: dict[str, Any] = {"device_id": device_id, "iat": issued, "exp": issued + int(lifetime)}
        payload.update(claims)
        payload = {name: value for name, value in payload.items() if value is not None}
        return jwt.encode({"alg": "ES256", "kid": self.kid, **(header or {})}, payload, self.key)


@pytest.fixture
def posture_signer() -> PostureSigner:
    return PostureSigner()

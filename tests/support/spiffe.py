"""Test fixtures for workload identity: SPIFFE trust domains with their CAs and X.509 SVIDs.

``spiffe_pki`` extends the device PKI (server certificate, device CA, another CA) with the
CAs of two trust domains, ``corp.example`` and ``partner.example``, each written to its
bundle file, and a CA no bundle holds. ``spiffe_pki.svid(...)`` issues an SVID (one
``spiffe://`` URI SAN, a leaf's key usage) or, with its options, the certificates an SVID
must not be (two URIs, none, a CA flag, expired...). ``workload_yaml()`` is the
``workload_identity`` section naming both bundles.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509

from tests.support.posture import DAY, CertificateAuthority, DevicePki, Issued

CORP = "corp.example"
PARTNER = "partner.example"


def key_usage(*, digital_signature: bool = True, cert_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=digital_signature, key_cert_sign=cert_sign, crl_sign=cert_sign,
                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                         key_agreement=False, encipher_only=False, decipher_only=False)


class SpiffePki(DevicePki):
    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.authorities = {CORP: CertificateAuthority("Corp SPIFFE CA", directory),
                            PARTNER: CertificateAuthority("Partner SPIFFE CA", directory)}
        self.unknown_ca = CertificateAuthority("Unknown SPIFFE CA", directory)
        self.bundle_files = {domain: directory / f"{domain}.bundle.pem" for domain in self.authorities}
        for domain, ca in self.authorities.items():
            self.write_bundle(domain, ca)

    def write_bundle(self, domain: str, *authorities: CertificateAuthority) -> None:
        """Replace ``domain``'s bundle file atomically (write, then rename) with these CAs."""
        target = self.bundle_files[domain]
        staged = target.with_suffix(".new")
        staged.write_bytes(b"".join(ca.cert_file.read_bytes() for ca in authorities))
        staged.replace(target)

    def svid(self, spiffe_id: str | None = "spiffe://corp.example/billing/api", *,
             ca: CertificateAuthority | None = None, uris: Sequence[str] | None = None, ca_flag: bool = False,
             not_before: datetime | None = None, not_after: datetime | None = None) -> Issued:
        """An X.509 SVID naming ``spiffe_id``, issued by its trust domain's CA unless ``ca`` says otherwise."""
        if uris is None:
            uris = [spiffe_id] if spiffe_id is not None else []
        if ca is None:
            domain = (spiffe_id or "spiffe://corp.example").removeprefix("spiffe://").partition("/")[0]
            ca = self.authorities[domain]
        extensions: list[tuple[x509.ExtensionType, bool]] = [(key_usage(cert_sign=ca_flag), True)]
        if ca_flag:
            extensions.append((x509.BasicConstraints(ca=True, path_length=None), True))
        return ca.issue(uris=uris, extensions=extensions, not_before=not_before, not_after=not_after)

    def expired_svid(self, spiffe_id: str = "spiffe://corp.example/billing/api") -> Issued:
        now = datetime.now(UTC)
        return self.svid(spiffe_id, not_before=now - 10 * DAY, not_after=now - DAY)

    def workload_yaml(self) -> str:
        """The ``workload_identity`` mapping naming both bundles, as one YAML flow line."""
        domains = ", ".join(f"{domain}: {{bundle_file: '{path}'}}" for domain, path in self.bundle_files.items())
        return f"{{trust_domains: {{{domains}}}}}"


@pytest.fixture
def spiffe_pki(tmp_path: Path) -> SpiffePki:
    directory = tmp_path / "pki"
    directory.mkdir()
    return SpiffePki(directory)

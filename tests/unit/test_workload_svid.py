"""The X.509-SVID rules (ztproxy.workloads.svid) and SPIFFE ID syntax, over generated certificates."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support.posture import DAY, CertificateAuthority
from tests.support.spiffe import CORP, PARTNER, SpiffePki, key_usage
from ztproxy.workloads import svid as rules
from ztproxy.workloads.ids import parse_spiffe_id, trust_domain_problem
from ztproxy.workloads.svid import Rejected, Svid, TrustBundle, identify


def bundles(pki: SpiffePki) -> dict[str, TrustBundle]:
    return {domain: TrustBundle.of(domain, [ca.certificate]) for domain, ca in pki.authorities.items()}


def now() -> datetime:
    return datetime.now(UTC)


def test_an_svid_of_its_trust_domain_identifies_the_workload(spiffe_pki: SpiffePki) -> None:
    issued = spiffe_pki.svid("spiffe://corp.example/billing/api")
    found = identify(issued.certificate, (), bundles(spiffe_pki), now())
    assert isinstance(found, Svid)
    assert (found.spiffe_id, found.trust_domain) == ("spiffe://corp.example/billing/api", CORP)
    # Valid while the leaf and its CA both are.
    assert found.not_after == issued.certificate.not_valid_after_utc
    partner = identify(spiffe_pki.svid("spiffe://partner.example/x").certificate, (), bundles(spiffe_pki), now())
    assert isinstance(partner, Svid) and partner.trust_domain == PARTNER


def test_a_certificate_no_bundle_verifies_is_not_a_workload_certificate(spiffe_pki: SpiffePki) -> None:
    for issued in (spiffe_pki.svid("spiffe://corp.example/a", ca=spiffe_pki.unknown_ca),
                   spiffe_pki.device("mbp-42")):  # a device certificate: the device CA is no trust bundle
        assert identify(issued.certificate, (), bundles(spiffe_pki), now()) is None


@pytest.mark.parametrize(("case", "reason"), [
    ("another trust domain", rules.TRUST_DOMAIN_MISMATCH),
    ("two URIs", rules.SEVERAL_URIS),
    ("no URI", rules.NO_SPIFFE_ID),
    ("a CA", rules.CA_CERTIFICATE),
    ("not SPIFFE", rules.INVALID_SPIFFE_ID),
    ("the trust domain itself", rules.INVALID_SPIFFE_ID),
    ("expired", rules.EXPIRED),
    ("not yet valid", rules.NOT_YET_VALID),
])
def test_a_verified_certificate_that_is_no_svid_is_rejected_with_its_reason(
        spiffe_pki: SpiffePki, case: str, reason: str) -> None:
    corp = spiffe_pki.authorities[CORP]
    later = now() + DAY
    issued = {
        # Signed by corp.example's CA, naming partner.example: the bundle that verified it is corp's.
        "another trust domain": lambda: spiffe_pki.svid("spiffe://partner.example/billing/api", ca=corp),
        "two URIs": lambda: spiffe_pki.svid(uris=["spiffe://corp.example/a", "spiffe://corp.example/b"], ca=corp),
        "no URI": lambda: spiffe_pki.svid(None, ca=corp),
        "a CA": lambda: spiffe_pki.svid("spiffe://corp.example/ca", ca_flag=True),
        "not SPIFFE": lambda: spiffe_pki.svid(uris=["https://corp.example/billing"], ca=corp),
        "the trust domain itself": lambda: spiffe_pki.svid("spiffe://corp.example", ca=corp),
        "expired": lambda: spiffe_pki.expired_svid(),
        "not yet valid": lambda: spiffe_pki.svid(not_before=later, not_after=later + DAY),
    }[case]()
    found = identify(issued.certificate, (), bundles(spiffe_pki), now())
    assert isinstance(found, Rejected), found
    assert found.reason == reason and found.trust_domain == CORP and found.detail


def test_a_leaf_with_a_signing_key_usage_is_rejected(spiffe_pki: SpiffePki) -> None:
    corp = spiffe_pki.authorities[CORP]
    usage = x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=False, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False)
    issued = corp.issue(uris=["spiffe://corp.example/a"], extensions=[(usage, True)])
    found = identify(issued.certificate, (), bundles(spiffe_pki), now())
    assert isinstance(found, Rejected) and found.reason == rules.KEY_USAGE


def test_the_bundle_of_the_named_trust_domain_is_tried_first(spiffe_pki: SpiffePki) -> None:
    # Federation: one CA in two bundles. The SVID's own trust domain's bundle verifies it.
    corp = spiffe_pki.authorities[CORP]
    shared = {CORP: TrustBundle.of(CORP, [corp.certificate]), PARTNER: TrustBundle.of(PARTNER, [corp.certificate])}
    for spiffe_id, domain in (("spiffe://corp.example/a", CORP), ("spiffe://partner.example/b", PARTNER)):
        found = identify(spiffe_pki.svid(spiffe_id, ca=corp).certificate, (), shared, now())
        assert isinstance(found, Svid) and found.trust_domain == domain


def test_an_intermediate_ca_presented_with_the_leaf_completes_the_chain(spiffe_pki: SpiffePki) -> None:
    corp = CertificateAuthority("Corp SPIFFE root", spiffe_pki.directory, path_length=None)
    roots = {CORP: TrustBundle.of(CORP, [corp.certificate])}
    intermediate = corp.issue(common_name="Corp SPIFFE intermediate", extensions=[
        (x509.BasicConstraints(ca=True, path_length=None), True), (key_usage(cert_sign=True), True)])
    leaf_builder = (x509.CertificateBuilder().subject_name(x509.Name([]))
                    .issuer_name(intermediate.certificate.subject)
                    .public_key(ec.generate_private_key(ec.SECP256R1()).public_key())
                    .serial_number(x509.random_serial_number())
                    .not_valid_before(now() - DAY).not_valid_after(now() + DAY)
                    .add_extension(x509.SubjectAlternativeName(
                        [x509.UniformResourceIdentifier("spiffe://corp.example/deep")]), critical=True))
    leaf = leaf_builder.sign(intermediate.key, hashes.SHA256())
    assert identify(leaf, (), roots, now()) is None  # the bundle alone does not reach it
    found = identify(leaf, (intermediate.certificate,), roots, now())
    assert isinstance(found, Svid) and found.spiffe_id == "spiffe://corp.example/deep"


def test_an_expired_ca_expires_its_svids(spiffe_pki: SpiffePki) -> None:
    found = identify(spiffe_pki.svid().certificate, (), bundles(spiffe_pki), now() + timedelta(days=400))
    assert isinstance(found, Rejected) and found.reason == rules.EXPIRED


@pytest.mark.parametrize("uri", [
    "spiffe://corp.example/billing/api", "spiffe://a-b_c.d/x.y-z_0", "spiffe://corp.example",
])
def test_valid_spiffe_ids(uri: str) -> None:
    assert str(parse_spiffe_id(uri)) == uri


@pytest.mark.parametrize("uri", [
    "spiffe://Corp.example/a", "spiffe://corp.example:443/a", "spiffe://user@corp.example/a",
    "spiffe://corp.example/a/", "spiffe://corp.example//a", "spiffe://corp.example/./a", "spiffe://corp.example/../a",
    "spiffe://corp.example/a?b", "spiffe://corp.example/a#b", "spiffe:///a", "SPIFFE://corp.example/a",
    "https://corp.example/a", "spiffe://corp.example/" + "a" * 2048, "spiffe://corp.example/a%20b",
])
def test_invalid_spiffe_ids(uri: str) -> None:
    with pytest.raises(ValueError):
        parse_spiffe_id(uri)


def test_trust_domain_names() -> None:
    assert trust_domain_problem("corp.example") is None
    for bad in ("", "Corp.example", "corp.example:8443", "spiffe://corp.example", "corp example", "a" * 256):
        assert trust_domain_problem(bad) is not None, bad

"""The X.509-SVID rules: which workload, if any, a verified client certificate identifies.

TLS has verified the client's chain against every CA the listener trusts (the device CA
and each trust bundle) without looking at dates. Here, ``cryptography``'s verifier tells
which trust bundle issued the certificate (the one of the trust domain the certificate
names is tried first), and the SPIFFE X.509-SVID standard decides whether it identifies a
workload:

- a certificate no trust bundle verifies is not a workload certificate at all (a device
  certificate, told apart by the CA that issued it): ``None``, and nothing to say about it;
- one a bundle verifies is an SVID only when it is a leaf (X509-SVID 4.1: no CA flag; 4.3:
  no keyCertSign or cRLSign, digitalSignature set when it states a key usage) with exactly
  one URI SAN (X509-SVID 2), a valid SPIFFE ID naming a workload (a path, not the trust
  domain itself) in the trust domain of the bundle that verified it (X509-SVID 5.2), and
  when it, and every certificate of its chain, is within its validity period;
- otherwise it is :class:`Rejected`, with a stable reason and a sentence for the log.

``examine`` does what does not depend on the clock and is remembered per certificate;
``identify`` adds the validity check. This module imports no aiohttp.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.x509.verification import ExtensionPolicy, PolicyBuilder, Store, VerificationError

from ztproxy.workloads.ids import parse_spiffe_id

# Reasons a verified certificate is no workload identity (the event's ``reason``).
CA_CERTIFICATE = "ca-certificate"
KEY_USAGE = "key-usage"
NO_SPIFFE_ID = "no-spiffe-id"
SEVERAL_URIS = "several-uri-sans"
INVALID_SPIFFE_ID = "invalid-spiffe-id"
TRUST_DOMAIN_MISMATCH = "trust-domain-mismatch"
EXPIRED = "expired"
NOT_YET_VALID = "not-yet-valid"
UNREADABLE = "unreadable"


@dataclass(frozen=True, slots=True)
class TrustBundle:
    """The CA certificates that issue one trust domain's SVIDs."""

    trust_domain: str
    authorities: tuple[x509.Certificate, ...]
    store: Store

    @classmethod
    def of(cls, trust_domain: str, authorities: Sequence[x509.Certificate]) -> TrustBundle:
        return cls(trust_domain, tuple(authorities), Store(list(authorities)))


@dataclass(frozen=True, slots=True)
class Svid:
    """A workload's identity, valid from ``not_before`` to ``not_after`` (its whole chain's)."""

    spiffe_id: str
    trust_domain: str
    not_before: datetime
    not_after: datetime


@dataclass(frozen=True, slots=True)
class Rejected:
    """A certificate a trust bundle verified that is no workload identity, and why."""

    reason: str
    detail: str
    trust_domain: str | None  # of the bundle that verified it
    spiffe_id: str | None = None  # the URI it names, when it names one


def identify(leaf: x509.Certificate, intermediates: Sequence[x509.Certificate],
             bundles: Mapping[str, TrustBundle], now: datetime) -> Svid | Rejected | None:
    """The workload ``leaf`` identifies at ``now``, why it identifies none, or None: not an SVID of ours."""
    found = examine(leaf, intermediates, bundles, now)
    if isinstance(found, Svid):
        return expiry(found, now) or found
    return found


def expiry(svid: Svid, now: datetime) -> Rejected | None:
    """The rejection of ``svid`` at ``now`` when it or its chain is outside its validity period."""
    # RFC 5280 4.1.2.5: the validity period includes both dates. TLS did not check them.
    if now > svid.not_after:
        return Rejected(EXPIRED, f"expired at {svid.not_after.isoformat()} (the certificate or its issuer)",
                        svid.trust_domain, svid.spiffe_id)
    if now < svid.not_before:
        return Rejected(NOT_YET_VALID, f"not valid before {svid.not_before.isoformat()}", svid.trust_domain,
                        svid.spiffe_id)
    return None


def examine(leaf: x509.Certificate, intermediates: Sequence[x509.Certificate],
            bundles: Mapping[str, TrustBundle], now: datetime) -> Svid | Rejected | None:
    """Everything but the dates: the bundle that verifies ``leaf``, then the SVID rules.

    The chain is verified at ``now`` brought within the leaf's validity, so an expired SVID
    is still told apart from a certificate of no trust domain (``identify`` then says expired).
    """
    unreadable: str | None = None
    try:
        uris = _uris(leaf)
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as exc:
        uris, unreadable = [], str(exc)
    claimed = _trust_domain_of(uris[0]) if len(uris) == 1 else None
    at = min(max(now, leaf.not_valid_before_utc), leaf.not_valid_after_utc)
    # The bundle of the trust domain the certificate names first: federated bundles may share a CA.
    order = sorted(bundles.values(), key=lambda bundle: bundle.trust_domain != claimed)
    verified = next(((bundle.trust_domain, chain) for bundle in order
                     if (chain := _verified_chain(bundle, leaf, intermediates, at)) is not None), None)
    if verified is None:
        return None
    domain, chain = verified
    if unreadable is not None:
        return Rejected(UNREADABLE, f"its extensions cannot be read: {unreadable}", domain)
    uri = uris[0] if len(uris) == 1 else None
    problem = _leaf_problem(leaf)
    if problem is not None:
        return Rejected(problem[0], problem[1], domain, uri)
    if not uris:
        return Rejected(NO_SPIFFE_ID, "it has no URI subject alternative name (the SPIFFE ID)", domain)
    if uri is None:
        return Rejected(SEVERAL_URIS, f"it has {len(uris)} URI subject alternative names; an SVID has exactly one",
                        domain, ", ".join(uris)[:512])
    try:
        spiffe_id = parse_spiffe_id(uri)
    except ValueError as exc:
        return Rejected(INVALID_SPIFFE_ID, f"its URI is not a SPIFFE ID: {exc}", domain, uri[:512])
    if not spiffe_id.path:
        return Rejected(INVALID_SPIFFE_ID, "its SPIFFE ID names the trust domain, not a workload", domain, uri)
    if spiffe_id.trust_domain != domain:
        return Rejected(TRUST_DOMAIN_MISMATCH, f"it names trust domain {spiffe_id.trust_domain!r} but was issued "
                                               f"by the trust bundle of {domain!r}", domain, uri)
    return Svid(uri, domain, max(cert.not_valid_before_utc for cert in chain),
                min(cert.not_valid_after_utc for cert in chain))


def _uris(leaf: x509.Certificate) -> list[str]:
    try:
        names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return names.get_values_for_type(x509.UniformResourceIdentifier)


def _trust_domain_of(uri: str) -> str | None:
    try:
        return parse_spiffe_id(uri).trust_domain
    except ValueError:
        return None


def _leaf_problem(leaf: x509.Certificate) -> tuple[str, str] | None:
    extensions = leaf.extensions
    try:
        if extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            return CA_CERTIFICATE, "it is a CA certificate (X509-SVID 4.1: a leaf SVID sets cA to false)"
    except x509.ExtensionNotFound:
        pass
    try:
        usage = extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return None
    if usage.key_cert_sign or usage.crl_sign or not usage.digital_signature:
        return KEY_USAGE, ("its key usage is not a leaf's (X509-SVID 4.3: digitalSignature set, keyCertSign "
                           "and cRLSign not)")
    return None


def _verified_chain(bundle: TrustBundle, leaf: x509.Certificate, intermediates: Sequence[x509.Certificate],
                    at: datetime) -> list[x509.Certificate] | None:
    """The chain from ``leaf`` to a CA of ``bundle``, verified by ``cryptography``; None if there is none.

    CAs are held to the Web PKI's profile (basicConstraints cA, keyCertSign...); the leaf's
    extensions are left to the SVID rules above, so that a CA certificate or a second URI
    presented as a leaf is reported, not mistaken for a certificate of no trust domain.
    """
    verifier = (PolicyBuilder().store(bundle.store).time(at)
                .extension_policies(ca_policy=ExtensionPolicy.webpki_defaults_ca(),
                                    ee_policy=ExtensionPolicy.permit_all())
                .build_client_verifier())
    try:
        return verifier.verify(leaf, list(intermediates)).chain
    except VerificationError:
        return None

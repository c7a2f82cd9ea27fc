"""The app's workload service: the calling workload a request's client certificate names.

``workloads_ctx`` (a cleanup context) keeps :class:`Workloads` under ``WORKLOADS`` when the
configuration has ``workload_identity`` (else None). The authentication stage asks
:func:`workload_caller` on routes whose rules name services, when the request carries no
bearer token. What ``svid.examine`` finds is remembered per certificate and trust bundle
generation; the dates are checked on every request. A certificate that a trust bundle
issued but that is no SVID gives no caller and a ``workload_certificate_rejected`` event
saying why; one of no trust domain (a device certificate) gives no caller, silently. In
forward-auth the TLS peer is the calling proxy, so its certificate names no caller.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime

import structlog
from aiohttp import web
from cryptography import x509

from ztproxy.errors import ConfigError, ConfigIssue
from ztproxy.memo import Memo
from ztproxy.policy.model import Service
from ztproxy.posture.service import caller_certificate
from ztproxy.state import CONFIG, ServiceCaller
from ztproxy.workloads.bundles import TrustBundles, trust_bundles
from ztproxy.workloads.svid import UNREADABLE, Rejected, Svid, TrustBundle, examine, expiry

log = structlog.get_logger("ztproxy.workloads")

_CACHE_SIZE = 4096  # certificates examined, by DER


class Workloads:
    def __init__(self, bundles: TrustBundles) -> None:
        self._bundles = bundles
        # DER -> (bundle generation, what examine found, the caller of an SVID)
        self._seen: Memo[bytes, tuple[int, Svid | Rejected | None, ServiceCaller | None]] = Memo(_CACHE_SIZE)

    def caller(self, der: bytes, now: datetime) -> ServiceCaller | None:
        """The workload ``der`` (the TLS client certificate) identifies at ``now``, if any."""
        bundles = self._bundles.current()
        seen = self._seen.get(der)
        if seen is None or seen[0] != bundles.generation:
            found = _examine(der, bundles.by_domain, now)
            caller = None if not isinstance(found, Svid) else ServiceCaller(
                Service(subject=found.spiffe_id, spiffe_id=found.spiffe_id, binding="mtls"),
                # How logs and assertions name this credential: a hash, like a token's.
                hashlib.sha256(der).hexdigest()[:32], found.not_after.timestamp())
            seen = self._seen.remember(der, (bundles.generation, found, caller))
        _, found, caller = seen
        rejected = expiry(found, now) if isinstance(found, Svid) else found
        if rejected is not None:
            log.info("workload_certificate_rejected", reason=rejected.reason, detail=rejected.detail,
                     trust_domain=rejected.trust_domain, spiffe_id=rejected.spiffe_id)
            return None
        return caller


def _examine(der: bytes, bundles: Mapping[str, TrustBundle], now: datetime) -> Svid | Rejected | None:
    try:
        leaf = x509.load_der_x509_certificate(der)
    except ValueError as exc:
        return Rejected(UNREADABLE, f"the certificate cannot be read: {exc}", None)
    # The ssl module hands over the leaf alone (before Python 3.13): the CA that issues the
    # SVIDs, intermediates included, must be in the trust bundle.
    return examine(leaf, (), bundles, now)


WORKLOADS = web.AppKey[Workloads | None]("workloads")


async def workloads_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[CONFIG].workload_identity
    if settings is None:
        app[WORKLOADS] = None
        yield
        return
    try:
        bundles = trust_bundles(settings)
    except (OSError, ValueError) as exc:
        raise ConfigError([ConfigIssue("workload_identity.trust_domains", str(exc))]) from None
    app[WORKLOADS] = Workloads(bundles)
    yield


def workload_caller(request: web.Request) -> ServiceCaller | None:
    """The workload the request's client certificate identifies; None without one, or for another certificate."""
    workloads = request.app[WORKLOADS]
    if workloads is None:
        return None
    der = caller_certificate(request)  # in forward-auth none: the TLS peer is the calling proxy
    if der is None:
        return None
    return workloads.caller(der, datetime.now(UTC))

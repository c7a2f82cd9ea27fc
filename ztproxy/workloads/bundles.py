"""Trust bundle files, read again when they change; and the listener's trust store that follows them.

:class:`TrustBundles` holds each trust domain's bundle (PEM CA certificates) as its file
said when last looked at. It looks at the files' size, times and inode at most once per
``check_interval`` (1 s), when asked, and reads a changed file again: a bundle rotated on
disk takes effect within a second, without a restart or a reload. A file that cannot be
read, or holds no certificate, keeps the last good bundle, with an error event (replace
bundles atomically: write another file, then rename it over this one). Each change gives
a new ``generation``.

The listener and the app of a configuration share one :class:`TrustBundles` per set of
files (:func:`trust_bundles`), so the handshake and the identification agree on what is
trusted. :class:`ClientTrust` gives each TLS handshake the listener's context built with
the current bundles: an ``SSLContext.sni_callback`` (called for every ClientHello, with or
without a server name) moves the connection to a context rebuilt after a change, before
the client's certificate is verified. A CA removed from its bundle stops being accepted by
the next handshake. This module imports no aiohttp.
"""

from __future__ import annotations

import hashlib
import os
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import structlog
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from ztproxy.config.workloads import WorkloadIdentityConfig
from ztproxy.workloads.svid import TrustBundle

log = structlog.get_logger("ztproxy.workloads")

CHECK_INTERVAL = 1.0
_Signature = tuple[int, int, int, int]  # inode, size, mtime_ns, ctime_ns
# A file changed this recently may change again within the file system's timestamp
# granularity without its signature changing: compare its bytes too.
_RACY_SECONDS = 2.0


def read_bundle(trust_domain: str, content: bytes) -> TrustBundle:
    """The bundle a PEM file's content holds; ValueError when it holds no certificate."""
    return TrustBundle.of(trust_domain, x509.load_pem_x509_certificates(content))


@dataclass(frozen=True, slots=True)
class Bundles:
    """The trust bundles as of one look at the files."""

    generation: int
    by_domain: Mapping[str, TrustBundle]
    pem: str  # every CA of every bundle, for the listener's trust store

    @classmethod
    def of(cls, generation: int, bundles: Mapping[str, TrustBundle]) -> Bundles:
        pem = "".join(ca.public_bytes(Encoding.PEM).decode("ascii")
                      for bundle in bundles.values() for ca in bundle.authorities)
        return cls(generation, MappingProxyType(dict(bundles)), pem)


@dataclass(slots=True)
class _File:
    path: str
    signature: _Signature | None = None
    digest: bytes | None = None
    failed: bool = False  # said once per failure, not at every look


class TrustBundles:
    """Each trust domain's bundle, from its file; ``current()`` looks at the files when due."""

    def __init__(self, files: Mapping[str, str], *, check_interval: float = CHECK_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """Reads every file; OSError or ValueError (naming the trust domain) when one cannot be read."""
        self._files = {domain: _File(path) for domain, path in files.items()}
        self._interval = check_interval
        self._clock = clock
        bundles = {}
        for domain, entry in self._files.items():
            entry.signature = _stat(entry.path)
            content = _read(entry.path)
            entry.digest = hashlib.sha256(content).digest()
            try:
                bundles[domain] = read_bundle(domain, content)
            except ValueError:
                raise ValueError(f"the trust bundle of {domain!r} ({entry.path}) holds no PEM certificate") from None
        self._current = Bundles.of(0, bundles)
        self._checked = clock()

    def current(self) -> Bundles:
        """The bundles, the files looked at again if ``check_interval`` has passed since the last look."""
        if self._clock() - self._checked < self._interval:
            return self._current
        self._look()
        self._checked = self._clock()
        return self._current

    def _look(self) -> None:
        changed = dict(self._current.by_domain)
        for domain, entry in self._files.items():
            bundle = self._changed(domain, entry)
            if bundle is not None:
                changed[domain] = bundle
        if any(changed[domain] is not bundle for domain, bundle in self._current.by_domain.items()):
            self._current = Bundles.of(self._current.generation + 1, changed)
            log.info("trust_bundles_loaded", generation=self._current.generation,
                     authorities={domain: len(bundle.authorities) for domain, bundle in changed.items()})

    def _changed(self, domain: str, entry: _File) -> TrustBundle | None:
        """The file's new bundle if it changed and reads well; None to keep the current one."""
        try:
            signature = _stat(entry.path)
            racy = time.time() - signature[2] / 1e9 < _RACY_SECONDS
            if signature == entry.signature and not racy:
                return None
            content = _read(entry.path)
        except OSError as exc:
            self._failed(domain, entry, exc.strerror or str(exc))
            return None
        digest = hashlib.sha256(content).digest()
        entry.signature = signature
        if digest == entry.digest:
            return None
        try:
            bundle = read_bundle(domain, content)
        except ValueError:
            self._failed(domain, entry, "it holds no PEM certificate, or a broken one")
            return None
        entry.digest, entry.failed = digest, False
        return bundle

    def _failed(self, domain: str, entry: _File, error: str) -> None:
        if not entry.failed:
            log.error("trust_bundle_unreadable", trust_domain=domain, file=entry.path, error=error,
                      kept="the last good bundle")
        entry.failed, entry.signature, entry.digest = True, None, None


def _stat(path: str) -> _Signature:
    stat = os.stat(path)
    return stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns


def _read(path: str) -> bytes:
    with open(path, "rb") as file:
        return file.read()


_SHARED: dict[tuple[tuple[str, str], ...], TrustBundles] = {}


def trust_bundles(settings: WorkloadIdentityConfig) -> TrustBundles:
    """The one :class:`TrustBundles` of this process for these trust domains and files."""
    key = tuple(sorted((domain, entry.bundle_file) for domain, entry in settings.trust_domains.items()))
    bundles = _SHARED.get(key)
    if bundles is None:
        bundles = _SHARED[key] = TrustBundles(dict(key))
    return bundles


@dataclass
class ClientTrust:
    """The listener's TLS contexts: ``build(ca_pem)`` makes one trusting the device CA and ``ca_pem``."""

    bundles: TrustBundles
    build: Callable[[str], ssl.SSLContext]
    _generation: int = field(init=False, default=-1)
    _context: ssl.SSLContext | None = field(init=False, default=None)

    def context(self) -> ssl.SSLContext:
        """The context of the current bundles, rebuilt after a change (a failing build keeps the last)."""
        current = self.bundles.current()
        if self._context is None:
            self._context = self.build(current.pem)
            self._generation = current.generation
        elif current.generation != self._generation:
            self._generation = current.generation
            try:
                self._context = self.build(current.pem)
            except (OSError, ssl.SSLError, ValueError) as exc:
                log.error("tls_context_rebuild_failed", error=str(exc), kept="the previous trust store")
        return self._context

    def listener_context(self) -> ssl.SSLContext:
        """The context the listener serves with: each handshake moves to ``context()``."""
        first = self.context()
        first.sni_callback = self._on_client_hello
        return first

    def _on_client_hello(self, connection: ssl.SSLObject | ssl.SSLSocket, server_name: str | None,
                         context: ssl.SSLContext) -> None:
        # OpenSSL verifies the client's certificate with the trust store of the context the
        # connection has when the certificate arrives (ssl->ctx), after this callback.
        current = self.context()
        if current is not context:
            connection.context = current

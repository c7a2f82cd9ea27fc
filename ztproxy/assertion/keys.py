"""The keys that sign identity assertions: key files, the rotation schedule, the JWKS.

A key is an EC P-256 private key in a PEM file. Its creation time is written in the file,
as a line ``created: 2024-05-06T10:00:00Z`` of the PEM explanatory text before
``-----BEGIN`` (RFC 7468 5.2), so the key and its age cannot drift apart; its kid is its
RFC 7638 thumbprint. ``ztproxy keys generate`` names the files ``<created>-<kid>.pem``
for people listing the directory; ztproxy itself reads the time and kid from the content.
Keys come from every ``*.pem`` in ``assertion.keys_dir`` and from ``assertion.key_files``.

Rotation is a pure function of (keys, now), so every worker and replica that sees the same
files makes the same choice without talking to the others. With P = publish_before_use:

- pending:  published, not yet signing, until created + P (verifiers' JWKS caches learn it);
- signing:  the newest key created at least P ago (when none is, the oldest key: a fresh
  deployment has nothing to wait for);
- retiring: superseded at (the next newer key's created + P); still published for
  ttl + verifier_leeway after that, until every assertion it signed has expired;
- expired:  not published, never used; ``ztproxy keys rotate`` deletes the file.

:class:`KeyRing` re-reads the files when they change (checked at most every few seconds),
so a rotation needs no restart. This module imports no aiohttp.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import json
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from joserfc.jwk import ECKey

from ztproxy.config.assertion import AssertionConfig
from ztproxy.errors import ConfigError, ConfigIssue

ALGORITHM = "ES256"  # RFC 7518 3.4: ECDSA P-256 with SHA-256
DEFAULT_RELOAD_INTERVAL = 5.0
# Cache-Control max-age of the JWKS: at most this, and at most half of publish_before_use, so
# a cache that obeys it learns a new key before the key signs.
MAX_JWKS_MAX_AGE = 300
_MAX_KEY_FILE_BYTES = 64 * 1024
_CREATED_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_FILE_TIME_FORMAT = "%Y%m%dT%H%M%SZ"

_log = structlog.get_logger("ztproxy.assertion.keys")


class KeyState(enum.Enum):
    PENDING = "pending"
    SIGNING = "signing"
    RETIRING = "retiring"
    EXPIRED = "expired"


@dataclass(frozen=True, slots=True)
class SigningKey:
    kid: str  # RFC 7638 thumbprint of the public key
    created: int  # unix seconds
    key: ECKey  # private; its public JWK carries kid, alg and use
    source: str  # the file it came from, or "<ephemeral>"


@dataclass(frozen=True, slots=True)
class RotationPolicy:
    ttl: float  # assertion lifetime
    publish_before_use: float
    verifier_leeway: float

    @classmethod
    def from_config(cls, config: AssertionConfig) -> RotationPolicy:
        return cls(ttl=config.ttl, publish_before_use=config.publish_before_use,
                   verifier_leeway=config.verifier_leeway)

    @property
    def jwks_max_age(self) -> int:
        return max(1, min(MAX_JWKS_MAX_AGE, int(self.publish_before_use / 2)))


@dataclass(frozen=True, slots=True)
class KeyStatus:
    key: SigningKey
    state: KeyState
    usable_from: float  # created + P: when it may sign (a bootstrap key signs earlier)
    superseded_at: float | None  # when a newer key took over signing
    published_until: float | None  # superseded_at + ttl + leeway


# --- the schedule: pure functions of (keys, now) ----------------------------------------------


def _ordered(keys: Sequence[SigningKey]) -> list[SigningKey]:
    # The kid breaks ties, so replicas order keys created in the same second alike.
    return sorted(keys, key=lambda key: (key.created, key.kid))


def schedule(keys: Sequence[SigningKey], policy: RotationPolicy, now: float) -> list[KeyStatus]:
    """Every key's state at ``now``, oldest first."""
    ordered = _ordered(keys)
    usable = [index for index, key in enumerate(ordered) if key.created + policy.publish_before_use <= now]
    signer = usable[-1] if usable else 0
    statuses = []
    for index, key in enumerate(ordered):
        superseded = ordered[index + 1].created + policy.publish_before_use if index < signer else None
        until = superseded + policy.ttl + policy.verifier_leeway if superseded is not None else None
        if index == signer:
            state = KeyState.SIGNING
        elif index > signer:
            state = KeyState.PENDING
        else:
            state = KeyState.RETIRING if until is not None and now < until else KeyState.EXPIRED
        statuses.append(KeyStatus(key, state, key.created + policy.publish_before_use, superseded, until))
    return statuses


def next_change(keys: Sequence[SigningKey], policy: RotationPolicy, now: float) -> float:
    """The next time after ``now`` at which a key changes state (inf: never, as things stand)."""
    statuses = schedule(keys, policy, now)
    times = [s.usable_from for s in statuses] + [s.published_until for s in statuses if s.published_until]
    return min((t for t in times if t > now), default=float("inf"))


# --- key files --------------------------------------------------------------------------------


def generate_key(now: float) -> SigningKey:
    private = ec.generate_private_key(ec.SECP256R1())
    return _signing_key(private, int(now), "<new>")


def _signing_key(private: ec.EllipticCurvePrivateKey, created: int, source: str) -> SigningKey:
    kid = ECKey.import_key(private.public_key()).thumbprint()
    key = ECKey.import_key(private, parameters={"kid": kid, "alg": ALGORITHM, "use": "sig"})
    return SigningKey(kid=kid, created=created, key=key, source=source)


def key_file_text(key: SigningKey) -> bytes:
    created = datetime.fromtimestamp(key.created, UTC).strftime(_CREATED_FORMAT)
    header = f"ztproxy assertion signing key (EC P-256, kid {key.kid})\ncreated: {created}\n"
    return header.encode("ascii") + key.key.as_pem(private=True)


def write_key(directory: Path, key: SigningKey) -> Path:
    """Write ``key`` into ``directory`` (created 0700 if missing), mode 0600, atomically."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    stamp = datetime.fromtimestamp(key.created, UTC).strftime(_FILE_TIME_FORMAT)
    path = directory / f"{stamp}-{key.kid}.pem"
    # Readers skip dot files and names not ending in .pem, so they never see a half-written key.
    temporary = directory / f".{path.name}.{secrets.token_hex(4)}.tmp"
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(key_file_text(key))
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_directory(directory)
    return path


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class KeyFileError(ValueError):
    """A key file cannot be used; the message names the file and says why."""


def read_key_file(path: Path) -> SigningKey:
    try:
        with path.open("rb") as file:
            data = file.read(_MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if len(data) > _MAX_KEY_FILE_BYTES:
        raise KeyFileError(f"{path}: too large for a key file")
    preamble, begin, _ = data.partition(b"-----BEGIN")
    if not begin:
        raise KeyFileError(f"{path}: not a PEM file")
    created = _created(preamble, path)
    try:
        private = load_pem_private_key(data, password=None)
    except TypeError:
        raise KeyFileError(f"{path}: the key is encrypted; ztproxy reads unencrypted PEM keys") from None
    except (ValueError, UnicodeError):
        raise KeyFileError(f"{path}: not a PEM private key") from None
    if not isinstance(private, ec.EllipticCurvePrivateKey) or not isinstance(private.curve, ec.SECP256R1):
        raise KeyFileError(f"{path}: not an EC P-256 private key (ES256 needs one)")
    return _signing_key(private, created, str(path))


def _created(preamble: bytes, path: Path) -> int:
    for line in preamble.decode("ascii", "replace").splitlines():
        name, colon, value = line.partition(":")
        if colon and name.strip().lower() == "created":
            try:
                moment = datetime.strptime(value.strip(), _CREATED_FORMAT).replace(tzinfo=UTC)
            except ValueError:
                raise KeyFileError(f"{path}: invalid created time {value.strip()!r}: "
                                   "expected e.g. 2024-05-06T10:00:00Z (UTC)") from None
            return int(moment.timestamp())
    raise KeyFileError(f"{path}: no 'created: YYYY-mm-ddTHH:MM:SSZ' line before -----BEGIN "
                       "(create keys with `ztproxy keys generate`)")


def key_paths(directory: Path) -> list[Path]:
    """The key files of a directory: ``*.pem`` that are not dot files. Raises OSError."""
    return sorted(entry for entry in directory.iterdir()
                  if entry.name.endswith(".pem") and not entry.name.startswith("."))


def load_keys(keys_dir: str | None, key_files: Sequence[str]) -> list[SigningKey]:
    """Every key of the directory and the files; raises ConfigError naming each bad file."""
    issues: list[ConfigIssue] = []
    paths: list[tuple[Path, str]] = []
    if keys_dir is not None:
        try:
            paths += [(path, "assertion.keys_dir") for path in key_paths(Path(keys_dir))]
        except FileNotFoundError:
            pass  # no key yet: the first process creates the directory and a key
        except OSError as exc:
            issues.append(ConfigIssue("assertion.keys_dir", f"{keys_dir}: cannot list: {exc.strerror or exc}"))
    paths += [(Path(file), f"assertion.key_files[{index}]") for index, file in enumerate(key_files)]
    keys: dict[str, SigningKey] = {}
    for path, where in paths:
        try:
            key = read_key_file(path)
        except KeyFileError as exc:
            issues.append(ConfigIssue(where, str(exc)))
        else:
            # The same key twice (a mounted copy): the oldest claim on its age wins.
            if key.kid not in keys or key.created < keys[key.kid].created:
                keys[key.kid] = key
    if issues:
        raise ConfigError(issues)
    return _ordered(list(keys.values()))


def prune(directory: Path, policy: RotationPolicy, now: float) -> list[SigningKey]:
    """Delete the expired keys' files from ``directory``; returns the keys removed."""
    removed = []
    for status in schedule(load_keys(str(directory), ()), policy, now):
        if status.state is KeyState.EXPIRED:
            Path(status.key.source).unlink(missing_ok=True)
            removed.append(status.key)
    if removed:
        _fsync_directory(directory)
    return removed


def jwks(statuses: Sequence[KeyStatus]) -> dict[str, Any]:
    """The public JWKS of the keys not expired, newest first. Never a private part."""
    published = [status.key for status in statuses if status.state is not KeyState.EXPIRED]
    return {"keys": [key.key.as_dict(private=False) for key in reversed(published)]}


# --- the key ring a serving process holds -----------------------------------------------------


class KeyRing:
    """The keys of this process: which one signs now, and the JWKS to publish.

    ``now`` is unix time. Files are checked for changes at most every ``reload_interval``
    seconds; a set of files that fails to load is logged and the previous keys stay.
    """

    def __init__(self, policy: RotationPolicy, *, now: float, keys_dir: str | None = None,
                 key_files: Sequence[str] = (), keys: Sequence[SigningKey] = (),
                 reload_interval: float = DEFAULT_RELOAD_INTERVAL) -> None:
        self.policy = policy
        self._keys_dir = keys_dir
        self._key_files = tuple(key_files)
        self._reload_interval = reload_interval
        self._fixed = tuple(keys)
        self._fingerprint = self._files_fingerprint()
        self._keys = _ordered([*self._fixed, *load_keys(keys_dir, key_files)])
        if not self._keys:
            raise ConfigError([ConfigIssue("assertion", "no signing key: add one with `ztproxy keys generate`")])
        self._checked_at = now
        self._signer: tuple[SigningKey, float, float] | None = None  # key, valid from, until
        self._document: tuple[bytes, str, float, float] | None = None  # body, etag, valid from, until

    @property
    def _from_files(self) -> bool:
        return self._keys_dir is not None or bool(self._key_files)

    @classmethod
    def from_config(cls, config: AssertionConfig, *, now: float) -> KeyRing:
        """The configured keys; a first key in an empty ``keys_dir``; else one ephemeral key."""
        policy = RotationPolicy.from_config(config)
        if config.keys_dir is None and not config.key_files:
            _log.warning("assertion_key_ephemeral", reason="assertion.keys_dir is not set",
                         effect="assertions stop verifying when this process restarts")
            return cls(policy, now=now, keys=[generate_key(now)])
        if not load_keys(config.keys_dir, config.key_files) and config.keys_dir is not None:
            try:
                path = write_key(Path(config.keys_dir), generate_key(now))
            except OSError as exc:
                raise ConfigError([ConfigIssue("assertion.keys_dir",
                                               f"{config.keys_dir}: no key, and cannot create one: "
                                               f"{exc.strerror or exc}")]) from None
            _log.info("assertion_key_generated", path=str(path))
        return cls(policy, now=now, keys_dir=config.keys_dir, key_files=config.key_files)

    def statuses(self, now: float) -> list[KeyStatus]:
        self.refresh(now)
        return schedule(self._keys, self.policy, now)

    def signing_key(self, now: float) -> SigningKey:
        self.refresh(now)
        if self._signer is None or not self._signer[1] <= now < self._signer[2]:
            key = next(s.key for s in schedule(self._keys, self.policy, now) if s.state is KeyState.SIGNING)
            self._signer = (key, now, next_change(self._keys, self.policy, now))
        return self._signer[0]

    def jwks(self, now: float) -> dict[str, Any]:
        return jwks(self.statuses(now))

    def jwks_document(self, now: float) -> tuple[bytes, str, int]:
        """The JWKS as served: body, a strong ETag (quoted), Cache-Control max-age seconds."""
        self.refresh(now)
        if self._document is None or not self._document[2] <= now < self._document[3]:
            body = json.dumps(self.jwks(now), separators=(",", ":"), sort_keys=True).encode("ascii")
            etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
            self._document = (body, etag, now, next_change(self._keys, self.policy, now))
        return self._document[0], self._document[1], self.policy.jwks_max_age

    def refresh(self, now: float) -> None:
        """Re-read the key files if they changed; at most once per reload interval."""
        if not self._from_files or abs(now - self._checked_at) < self._reload_interval:
            return
        self._checked_at = now
        fingerprint = self._files_fingerprint()
        if fingerprint == self._fingerprint:
            return
        self._fingerprint = fingerprint
        try:
            keys = _ordered([*self._fixed, *load_keys(self._keys_dir, self._key_files)])
        except ConfigError as error:
            _log.error("assertion_keys_reload_failed", errors=[str(issue) for issue in error.issues],
                       kept=[key.kid for key in self._keys])
            return
        if not keys:
            _log.error("assertion_keys_reload_failed", errors=["no key left"], kept=[k.kid for k in self._keys])
            return
        self._keys = keys
        self._signer = self._document = None
        _log.info("assertion_keys_reloaded", kids=[key.kid for key in keys])

    def _files_fingerprint(self) -> tuple[tuple[str, int, int, int], ...]:
        """Name, inode, mtime and size of every key file: changes when a file is added,
        removed, replaced or rewritten (a renamed-in file has a new inode)."""
        paths: list[Path] = [Path(file) for file in self._key_files]
        if self._keys_dir is not None:
            with contextlib.suppress(OSError):  # load_keys reports it
                paths += key_paths(Path(self._keys_dir))
        stats = []
        for path in paths:
            try:
                info = path.stat()
            except OSError:
                stats.append((str(path), -1, -1, -1))
            else:
                stats.append((str(path), info.st_ino, info.st_mtime_ns, info.st_size))
        return tuple(stats)

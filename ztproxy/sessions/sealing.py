"""Sealing: the session ticket in the cookie, and the AES-GCM boxes around what stores keep.

The cookie carries a random session id plus a random per-session key (a :class:`Ticket`).
The store sees only SHA-256 of the id as the key and AES-256-GCM ciphertext under the
per-session key as the value, so a dump of the store opens no session and reads no
identity (STYLE 13; the design of oauth2-proxy's session tickets).

The ticket's first byte is its version, which says how the store key is spelled: version
2 (every new ticket) keys ``s:`` + 192 bits of the hash in base64url, 34 characters, short
enough for Redis to keep the indexes listing it as compact listpacks (members of at most
64 bytes); version 1 (the tickets of releases before it) keys ``s:`` + the whole hash in
hex, 66 characters. A version 1 cookie keeps opening its session until that session ends.

:class:`CookieSealer` seals the proxy's own short-lived cookies (login state) under
server-wide secrets, newest first, so rotating them is a config change (STYLE 14).

No aiohttp, no I/O; time is always a parameter.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

TICKET_VERSION = 2  # what new tickets are
LEGACY_TICKET_VERSION = 1  # tickets made before version 2: read, never made
SEAL_VERSION = 1
COOKIE_SEAL_VERSION = 1
ID_SIZE = 32
KEY_SIZE = 32  # AES-256
STORE_KEY_HASH_SIZE = 24  # bytes of SHA-256(id) in a version 2 store key
NONCE_SIZE = 12  # NIST SP 800-38D 8.2: 96-bit random nonces
TAG_SIZE = 16
MIN_SECRET_SIZE = 32
# Issue times may come from another replica whose clock runs a little ahead.
ALLOWED_CLOCK_SKEW = 60.0
MAX_COOKIE_TOKEN_LENGTH = 8192  # longer than any cookie a browser keeps; no work beyond it

_TICKET_BYTES = 1 + ID_SIZE + KEY_SIZE
_TICKET_CHARS = (_TICKET_BYTES * 8 + 5) // 6  # base64url without padding
_BASE64URL_RE = re.compile(r"[A-Za-z0-9_-]*")
_HEX_RE = re.compile(r"(?:[0-9a-fA-F]{2})+")
_ISSUED = struct.Struct(">Q")  # milliseconds since the epoch
_COOKIE_HKDF_INFO = b"ztproxy cookie sealer v1"


def _b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes | None:
    """Strict base64url without padding: None for any other alphabet or a non-canonical form."""
    if not _BASE64URL_RE.fullmatch(text) or len(text) % 4 == 1:
        return None
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    # Unused trailing bits must be zero, so one value has exactly one spelling.
    return data if _b64url_encode(data) == text else None


@dataclass(frozen=True, slots=True)
class Ticket:
    """What the session cookie carries. Both fields are secret: never logged, never stored."""

    session_id: bytes = field(repr=False)
    key: bytes = field(repr=False)  # the per-session AES-256-GCM key, never stored server-side
    version: int = TICKET_VERSION  # how the store key is spelled (see the module docstring)
    # Derived once per ticket: every signed-in request needs both, and each costs a SHA-256.
    store_key: str = field(init=False, repr=False, compare=False)  # the store key: a hash of the id
    public_id: str = field(init=False, repr=False, compare=False)  # for logs, assertions, the admin API

    def __post_init__(self) -> None:
        if len(self.session_id) != ID_SIZE or len(self.key) != KEY_SIZE:
            raise ValueError(f"a ticket holds a {ID_SIZE}-byte id and a {KEY_SIZE}-byte key")
        if self.version not in (TICKET_VERSION, LEGACY_TICKET_VERSION):
            raise ValueError(f"no ticket version {self.version}")
        # The store never holds what the cookie holds; logs and apps see a hash of that hash.
        digest = hashlib.sha256(self.session_id).digest()
        if self.version == LEGACY_TICKET_VERSION:
            store_key = "s:" + digest.hex()
        else:
            # 192 bits: no two sessions share a key, and the key gives nothing of the 256-bit id.
            store_key = "s:" + _b64url_encode(digest[:STORE_KEY_HASH_SIZE])
        object.__setattr__(self, "store_key", store_key)
        object.__setattr__(self, "public_id", public_handle(store_key))

    @classmethod
    def new(cls) -> Ticket:
        return cls(os.urandom(ID_SIZE), os.urandom(KEY_SIZE))

    @property
    def legacy(self) -> bool:
        """Made by a release before ticket version 2 (its session is kept in that release's format)."""
        return self.version == LEGACY_TICKET_VERSION

    def cookie_value(self) -> str:
        return _b64url_encode(bytes([self.version]) + self.session_id + self.key)

    @classmethod
    def parse(cls, value: str) -> Ticket | None:
        """The ticket in a cookie value, or None for anything malformed; never raises."""
        if not isinstance(value, str) or len(value) != _TICKET_CHARS:
            return None
        raw = _b64url_decode(value)
        if raw is None or len(raw) != _TICKET_BYTES or raw[0] not in (TICKET_VERSION, LEGACY_TICKET_VERSION):
            return None
        return cls(raw[1:1 + ID_SIZE], raw[1 + ID_SIZE:], raw[0])


def public_handle(store_key: str) -> str:
    """The public handle of the session stored under ``store_key``.

    A hash of the store key (itself a hash of the id), so it opens nothing and names no
    store key; the admin API, which sees store keys but never ids, derives the same handle.
    """
    return hashlib.sha256(b"ztproxy public session id\0" + store_key.encode("ascii")).hexdigest()[:16]


def seal(ticket: Ticket, plaintext: bytes) -> bytes:
    """``version || nonce || AES-GCM(ticket.key)`` bound to the ticket's store key."""
    header = bytes([SEAL_VERSION])
    nonce = os.urandom(NONCE_SIZE)
    # The store key as associated data: a value copied under another key does not open.
    aad = header + ticket.store_key.encode("ascii")
    return header + nonce + AESGCM(ticket.key).encrypt(nonce, plaintext, aad)


def unseal(ticket: Ticket, sealed: bytes) -> bytes | None:
    """The plaintext, or None when ``sealed`` is tampered, truncated or someone else's."""
    if len(sealed) < 1 + NONCE_SIZE + TAG_SIZE or sealed[0] != SEAL_VERSION:
        return None
    nonce = sealed[1:1 + NONCE_SIZE]
    aad = sealed[:1] + ticket.store_key.encode("ascii")
    try:
        return AESGCM(ticket.key).decrypt(nonce, sealed[1 + NONCE_SIZE:], aad)
    except InvalidTag:
        return None


def _derive_cookie_key(secret: bytes) -> AESGCM:
    if len(secret) < MIN_SECRET_SIZE:
        raise ValueError(f"a cookie secret needs at least {MIN_SECRET_SIZE} bytes")
    # RFC 5869: HKDF turns a secret of any shape into a uniform 256-bit key.
    key = HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=None, info=_COOKIE_HKDF_INFO).derive(secret)
    return AESGCM(key)


class CookieSealer:
    """Seals the proxy's own short-lived cookies with server-wide secrets, newest first.

    A token is ``base64url(version || nonce || AES-GCM(issued_ms || plaintext))`` with the
    purpose as associated data, so a token made for one purpose opens for no other.
    """

    def __init__(self, secrets: Sequence[bytes]) -> None:
        if not secrets:
            raise ValueError("CookieSealer needs at least one secret")
        self._keys = tuple(_derive_cookie_key(secret) for secret in secrets)

    def seal(self, plaintext: bytes, *, purpose: str, now: float) -> str:
        header = bytes([COOKIE_SEAL_VERSION])
        nonce = os.urandom(NONCE_SIZE)
        body = _ISSUED.pack(int(now * 1000)) + plaintext
        sealed = self._keys[0].encrypt(nonce, body, header + purpose.encode())
        return _b64url_encode(header + nonce + sealed)

    def unseal(self, token: str, *, purpose: str, now: float, max_age: float) -> bytes | None:
        """The plaintext, or None if tampered, sealed for another purpose, expired or malformed."""
        if not isinstance(token, str) or len(token) > MAX_COOKIE_TOKEN_LENGTH:
            return None
        raw = _b64url_decode(token)
        if (raw is None or len(raw) < 1 + NONCE_SIZE + TAG_SIZE + _ISSUED.size
                or raw[0] != COOKIE_SEAL_VERSION):
            return None
        nonce, sealed, aad = raw[1:1 + NONCE_SIZE], raw[1 + NONCE_SIZE:], raw[:1] + purpose.encode()
        for key in self._keys:  # rotation: tokens sealed before it still open until they expire
            try:
                body = key.decrypt(nonce, sealed, aad)
            except InvalidTag:
                continue
            issued = _ISSUED.unpack_from(body)[0] / 1000
            if not now - max_age <= issued <= now + ALLOWED_CLOCK_SKEW:
                return None
            return body[_ISSUED.size:]
        return None


def parse_secret(text: str) -> bytes:
    """A configured secret: hex (64+ digits), base64 (44+ characters) or raw text of 32+ bytes."""
    value = text.strip()
    if len(value) >= 2 * MIN_SECRET_SIZE and _HEX_RE.fullmatch(value):
        return bytes.fromhex(value)
    if len(value) >= 44:
        decoded = _decode_base64(value)
        if decoded is not None and len(decoded) >= MIN_SECRET_SIZE:
            return decoded
    raw = value.encode("utf-8")
    if len(raw) >= MIN_SECRET_SIZE:
        return raw
    raise ValueError(f"a secret needs at least {MIN_SECRET_SIZE} bytes: 64+ hex digits, 44+ base64 "
                     f"characters or {MIN_SECRET_SIZE}+ characters of text (e.g. `openssl rand -hex 32`)")


def _decode_base64(value: str) -> bytes | None:
    standard = value.replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(standard + "=" * (-len(standard) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None

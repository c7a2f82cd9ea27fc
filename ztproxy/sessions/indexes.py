"""The store indexes that find sessions: by user, email, IdP session, public handle and device.

An index is a store index (``Storage.put(..., indexes=...)``): a Redis sorted set of store
keys scored by their expiry, dropped member by member as the sessions go and as a whole with
its last one. Their names are kept short because every key costs Redis about 90 bytes before
its value, more with a long name (issue 19: at most 1 KiB of Redis a session, a user's only
session included):

- ``idx:u:``, ``idx:e:``, ``idx:i:`` + 128 bits of SHA-256 in base64url (28 characters, the
  jemalloc size class of 32 bytes), for the user, the email and the IdP session: each
  collision-free among any number of users a deployment has;
- ``idx:h:`` + the first three hex digits of the handle: 4,096 buckets of handles, not a key
  per session. The handle derives from the store key (``sealing.public_handle``), so a
  bucket's members say which of them has a given handle. A bucket of up to 128 members stays
  a listpack (Redis ``zset-max-listpack-entries``), about 50 bytes a member against 120-150
  for a key of its own; 4,096 buckets keep that up to some 400,000 live sessions, and spread
  the writes over every node of a cluster (no bucket takes more than its 1/4,096th).

The release before named them ``idx:user:``, ``idx:email:``, ``idx:sid:`` + the whole hash in
hex and ``idx:handle:`` + the handle, a key for each: lookups read those too (:func:`lookups`)
until the last session it wrote has expired. New sessions are written under the short names
only, unless ``sessions.legacy_indexes`` asks for both while replicas of that release still
serve (they read only the long ones). Device markers and their index keep their names. No I/O.
"""

from __future__ import annotations

import base64
import hashlib

from ztproxy.sessions.model import Session
from ztproxy.sessions.sealing import public_handle

HASH_BYTES = 16  # of SHA-256 in an index name: 128 bits
HANDLE_BUCKET_DIGITS = 3  # hex digits of the handle naming its bucket: 4,096 buckets


def _digest(*parts: str) -> str:
    raw = hashlib.sha256("\0".join(parts).encode()).digest()[:HASH_BYTES]
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def user_index(provider: str, subject: str) -> str:
    return "idx:u:" + _digest(provider, subject)


def email_index(provider: str, email: str) -> str:
    """Sessions by the user's email (security signals may name a user by email alone)."""
    return "idx:e:" + _digest(provider, email.lower())


def idp_session_index(provider: str, idp_session: str) -> str:
    """Sessions by the IdP's session (``sid``, OIDC Back-Channel Logout 1.0 section 2.4)."""
    return "idx:i:" + _digest(provider, idp_session)


def handle_bucket(handle: str) -> str:
    """The bucket listing the session with this public handle, among others (see the module docstring)."""
    return "idx:h:" + handle[:HANDLE_BUCKET_DIGITS]


def device_index(device_id: str) -> str:
    return "idx:device:" + hashlib.sha256(device_id.encode()).hexdigest()


def device_marker(device_id: str, store_key: str) -> str:
    """The key saying "this session was used from this device"; its value is the store key."""
    return "dev:" + hashlib.sha256(f"{device_id}\0{store_key}".encode()).hexdigest()


# The names the release before wrote (read, never written).

def legacy_user_index(provider: str, subject: str) -> str:
    return "idx:user:" + hashlib.sha256(f"{provider}\0{subject}".encode()).hexdigest()


def legacy_email_index(provider: str, email: str) -> str:
    return "idx:email:" + hashlib.sha256(f"{provider}\0{email.lower()}".encode()).hexdigest()


def legacy_idp_session_index(provider: str, idp_session: str) -> str:
    return "idx:sid:" + hashlib.sha256(f"{provider}\0{idp_session}".encode()).hexdigest()


def legacy_handle_index(handle: str) -> str:
    """The key of its own the release before gave each session's handle."""
    return "idx:handle:" + handle


_NAMES = (user_index, idp_session_index, email_index)
_LEGACY_NAMES = (legacy_user_index, legacy_idp_session_index, legacy_email_index)


def shared_indexes(session: Session, *, legacy: bool = False) -> list[str]:
    """The indexes listing this session with others of its user: its user's, its IdP session's, its email's
    (with ``legacy``: under the names of the release before)."""
    user, idp_session, email = _LEGACY_NAMES if legacy else _NAMES
    indexes = [user(session.provider, session.subject)]
    if session.idp_session:
        indexes.append(idp_session(session.provider, session.idp_session))
    if session.email:
        indexes.append(email(session.provider, session.email))
    return indexes


def written_indexes(store_key: str, session: Session, *, legacy: bool = False) -> list[str]:
    """Every index a session is put in when it is stored or its expiry extended; with ``legacy``
    (``sessions.legacy_indexes``), also those the release before reads, for its replicas."""
    handle = public_handle(store_key)
    indexes = [*shared_indexes(session), handle_bucket(handle)]
    if legacy:
        indexes += [*shared_indexes(session, legacy=True), legacy_handle_index(handle)]
    return indexes


def lookups(provider: str, *, subject: str | None = None, idp_session: str | None = None,
            email: str | None = None) -> list[str]:
    """The indexes listing the sessions of one IdP session, else of a user (by subject, else email):
    this release's, then the release before's."""
    for value, index, legacy in ((idp_session, idp_session_index, legacy_idp_session_index),
                                 (subject, user_index, legacy_user_index), (email, email_index, legacy_email_index)):
        if value is not None:
            return [index(provider, value), legacy(provider, value)]
    return []

"""The identity ztproxy asserts to upstream apps: the signed JWT and the plain headers.

- :class:`AssertionSigner` signs ``X-Ztproxy-Jwt-Assertion`` with the keys of a
  :class:`ztproxy.assertion.keys.KeyRing` (which also gives the JWKS to publish), cached per
  (session, route);
- :func:`identity_headers` gives ``X-Ztproxy-User``, ``-Email``, ``-Groups`` and a
  route's claim headers.

Apps verify the assertion with :mod:`ztproxy.verify`. This package imports no aiohttp.
"""

from __future__ import annotations

from ztproxy.assertion.headers import (
    EMAIL_HEADER,
    GROUPS_HEADER,
    USER_HEADER,
    claim_header_problem,
    identity_headers,
)
from ztproxy.assertion.signer import AssertionSigner, sid_for
from ztproxy.verify.verifier import ASSERTION_HEADER

__all__ = [
    "ASSERTION_HEADER",
    "EMAIL_HEADER",
    "GROUPS_HEADER",
    "USER_HEADER",
    "AssertionSigner",
    "claim_header_problem",
    "identity_headers",
    "sid_for",
]

"""Plain identity headers for apps that cannot verify the signed assertion.

``X-Ztproxy-User`` is the subject (``sub``): stable at the IdP, while an email address can
change or be given to someone else later. ``X-Ztproxy-Email`` and ``X-Ztproxy-Groups``
(sorted, comma-separated) follow, then a route's ``claim_headers`` (header name -> claim).

A header carries exactly the value or is left out, never a mangled one; the signed
assertion stays the complete record. Values are visible ASCII, without leading or trailing
whitespace (HTTP parsers strip it, so " admin" would arrive as "admin"; RFC 9110 5.5), so
CR, LF, NUL and every other control character or non-ASCII text leaves the value out.
A group containing a comma is left out of ``X-Ztproxy-Groups`` (it would read as two
groups). A claim that is not a string (number, boolean, list, object) is sent as compact
JSON with non-ASCII escaped; ``null`` and missing claims give no header. These headers are
only trustworthy when the app is reachable through the proxy alone; the proxy removes any
client-sent ``X-Ztproxy-*`` header before adding them.
This module imports no aiohttp.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from typing import Any

from ztproxy.headers import FORWARDED_PREFIX, RELIED_ON, fold_name
from ztproxy.policy.model import Identity
from ztproxy.verify.verifier import ASSERTION_HEADER

USER_HEADER = "X-Ztproxy-User"
EMAIL_HEADER = "X-Ztproxy-Email"
GROUPS_HEADER = "X-Ztproxy-Groups"

# RFC 9110 5.6.2: a field name is a token.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Framing, routing and credentials: a claim must never decide these (request smuggling,
# spoofed client addresses, injected cookies), nor stand in for the proxy's own headers.
_RESERVED = RELIED_ON | frozenset({
    "content-type", "content-encoding", "cookie", "authorization",
    *(name.lower() for name in (USER_HEADER, EMAIL_HEADER, GROUPS_HEADER, ASSERTION_HEADER)),
})


@functools.lru_cache(maxsize=1024)
def claim_header_problem(name: str) -> str | None:
    """Why ``name`` cannot carry a claim (for config validation), or None when it can."""
    if not _TOKEN.fullmatch(name):
        return f"invalid header name {name!r}: use letters, digits and '-'"
    folded = fold_name(name)  # any spelling: an app may fold X_Forwarded_For into X-Forwarded-For
    if folded in _RESERVED or folded.startswith((FORWARDED_PREFIX, "proxy-")):
        return f"header {name!r} cannot carry a claim: the proxy sets or controls it"
    return None


def _safe(value: str | None) -> str | None:
    """``value`` when it is visible ASCII with inner spaces only (nothing a parser would strip)."""
    if value and value.isascii() and value.isprintable() and value[0] != " " and value[-1] != " ":
        return value
    return None


def claim_header_value(value: Any) -> str | None:
    """A claim as a header value, or None when it gives no header (see the module doc)."""
    if value is None:
        return None
    if isinstance(value, str):
        return _safe(value)
    try:
        return _safe(json.dumps(value, ensure_ascii=True, separators=(",", ":"), sort_keys=True,
                                allow_nan=False))
    except (TypeError, ValueError):  # not JSON data
        return None


def identity_headers(identity: Identity, *, claim_headers: Mapping[str, str]) -> list[tuple[str, str]]:
    headers = []
    for name, value in ((USER_HEADER, identity.subject), (EMAIL_HEADER, identity.email)):
        if (safe := _safe(value)) is not None:
            headers.append((name, safe))
    groups = sorted(group for group in identity.groups if _safe(group) is not None and "," not in group)
    if groups:
        headers.append((GROUPS_HEADER, ",".join(groups)))
    for name, claim in claim_headers.items():
        if claim_header_problem(name) is None and (value := claim_header_value(identity.claims.get(claim))):
            headers.append((name, value))
    return headers

"""SPIFFE IDs and trust domain names: their syntax, as the SPIFFE ID standard states it.

A SPIFFE ID is ``spiffe://<trust domain>/<path>``: the trust domain in lowercase letters,
digits, ``.``, ``-`` and ``_``; the path made of segments of letters, digits, ``.``, ``-``
and ``_``, none empty, none ``.`` or ``..``; no query, fragment, port or user info; at most
2048 bytes. This module imports nothing but the standard library.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SCHEME = "spiffe://"
MAX_ID_BYTES = 2048  # SPIFFE ID standard 2.3: the longest SPIFFE ID
MAX_TRUST_DOMAIN = 255
_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]+")
_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")


def trust_domain_problem(name: str) -> str | None:
    """Why ``name`` is not a valid trust domain name, or None when it is one."""
    if not name:
        return "a trust domain name is empty"
    if len(name) > MAX_TRUST_DOMAIN:
        return f"a trust domain name has at most {MAX_TRUST_DOMAIN} characters"
    if not _TRUST_DOMAIN.fullmatch(name):
        return (f"invalid trust domain {name!r}: lowercase letters, digits, '.', '-' and '_' only "
                "(no scheme, port or path), such as corp.example")
    return None


@dataclass(frozen=True, slots=True)
class SpiffeId:
    trust_domain: str
    path: str  # "" for the trust domain itself, else "/segment/..."

    def __str__(self) -> str:
        return f"{SCHEME}{self.trust_domain}{self.path}"


def parse_spiffe_id(uri: str) -> SpiffeId:
    """The SPIFFE ID ``uri`` spells; ValueError saying what is wrong with it."""
    if len(uri.encode("utf-8", "surrogatepass")) > MAX_ID_BYTES:
        raise ValueError(f"longer than {MAX_ID_BYTES} bytes")
    if not uri.startswith(SCHEME):
        raise ValueError("not a spiffe:// URI")
    trust_domain, slash, path = uri[len(SCHEME):].partition("/")
    problem = trust_domain_problem(trust_domain)
    if problem is not None:
        raise ValueError(problem)
    if not slash:
        return SpiffeId(trust_domain, "")
    for segment in path.split("/"):
        if not segment or segment in (".", "..") or not _SEGMENT.fullmatch(segment):
            raise ValueError("a path segment is empty, '.', '..' or holds characters other than letters, "
                             "digits, '.', '-' and '_'")
    return SpiffeId(trust_domain, "/" + path)

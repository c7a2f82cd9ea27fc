"""Request targets and route lookup: which application a request is for.

:func:`parse_target` turns the request-target exactly as the client sent it into one
canonical path. That path picks the route and the policy, and it is also exactly what
the upstream receives, so the upstream never sees a path other than the one that was
authorised. Anything that cannot be canonicalised without guessing (encoded slash,
backslash, control characters, a ``..`` above the root) is rejected, not repaired.

:class:`RouteTable` maps (host, path) to a route with dict lookups only, so the cost of
:meth:`RouteTable.match` depends on the number of labels in the host and segments in
the path, never on the number of routes. Pure Python, no aiohttp.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

from ztproxy.errors import PathRejected

T = TypeVar("T")

# RFC 3986 2.3.
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# RFC 3986 3.3: pchar = unreserved / pct-encoded / sub-delims / ":" / "@". Paths made of
# these and "/" only, with no dot or empty segment, are already canonical.
_PLAIN_PATH = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/]*")
# Raw characters no canonical path may contain: C0 controls, space, DEL, backslash.
_FORBIDDEN_RAW = re.compile(r"[\x00-\x20\x7f\\]")
# The printable ASCII left once pchar, "%", "/", "?", "#" and "\" are taken out: not
# allowed raw in a path (RFC 3986 3.3) but unambiguous, so encoded rather than refused.
_ENCODE_RAW = {ord(char): f"%{ord(char):02X}" for char in "\"<>[]^`{|}"}


def _escape_tables() -> tuple[dict[str, str], dict[str, str]]:
    """Every two-hex-digit spelling (any case) -> its canonical form, or why it is refused."""
    canonical: dict[str, str] = {}
    refused: dict[str, str] = {}
    digits = "0123456789abcdefABCDEF"
    for high in digits:
        for low in digits:
            pair = high + low
            value = int(pair, 16)
            char = chr(value)
            if value < 0x20 or value == 0x7F:
                refused[pair] = "encoded control character in path"
            elif char == "/":
                # RFC 3986 2.2: "%2F" is data, not a delimiter, yet many upstreams decode it
                # into one; the route check and the upstream would disagree on the segments.
                refused[pair] = "encoded slash in path"
            elif char == "\\":
                refused[pair] = "encoded backslash in path"  # same reason as a raw backslash
            elif char in _UNRESERVED:
                canonical[pair] = char  # RFC 3986 6.2.2.2: decode unreserved characters
            else:
                canonical[pair] = "%" + pair.upper()  # RFC 3986 6.2.2.1: uppercase hex digits
    return canonical, refused


_ESCAPES, _REFUSED_ESCAPES = _escape_tables()

_HOST_NAME = re.compile(r"[a-z0-9_-]{1,63}(?:\.[a-z0-9_-]{1,63})*")
_MAX_HOST_NAME = 253  # RFC 1035 2.3.4, without the trailing dot
_MAX_HOST_VALUE = 300  # longer than any valid host[:port]; refuse before doing any work


@dataclass(frozen=True, slots=True)
class RequestTarget:
    """A request-target split and canonicalised (RFC 9112 3.2)."""

    path: str  # canonical, always starts with "/"
    query: str  # raw, without "?"; "" when there is none
    authority: str | None  # host[:port] of an absolute-form target, else None


@functools.lru_cache(maxsize=8192)  # hot path: clients ask for the same few addresses again and again
def parse_target(raw: str) -> RequestTarget:
    """Split and canonicalise a request-target (``request.raw_path``).

    Accepts origin-form (``/a?x``) and absolute-form (``http://host/a?x``); raises
    :class:`~ztproxy.errors.PathRejected` for anything else or anything ambiguous.
    """
    if "#" in raw:
        # RFC 9112 3.2: a request-target never carries a fragment.
        raise PathRejected("fragment in request address")
    authority: str | None = None
    if not raw.startswith("/"):
        authority, raw = _split_absolute_form(raw)
    path, _, query = raw.partition("?")
    if query and (" " in query or not query.isprintable()):
        raise PathRejected("control character or space in query")
    return RequestTarget(path=_canonical_path(path), query=query, authority=authority)


def _split_absolute_form(raw: str) -> tuple[str, str]:
    """``http://host:port/path?q`` -> (``host:port``, ``/path?q``)."""
    scheme, sep, rest = raw.partition("://")
    if not sep or not scheme:
        # Covers "*" (asterisk-form, OPTIONS only) and anything else not starting with "/".
        raise PathRejected("unsupported request address")
    if scheme.lower() not in ("http", "https"):
        raise PathRejected("unsupported scheme in request address")
    end = len(rest)
    for delimiter in "/?":
        found = rest.find(delimiter)
        if 0 <= found < end:
            end = found
    authority, remainder = rest[:end], rest[end:]
    # RFC 9110 4.2.4: userinfo in an http(s) URI is deprecated and must be treated as an error.
    if "@" in authority or normalize_host(authority) is None:
        raise PathRejected("invalid host in request address")
    if not remainder.startswith("/"):
        remainder = "/" + remainder  # RFC 9110 4.2.3: an empty path is the same as "/"
    return authority, remainder


def _canonical_path(path: str) -> str:
    if not path.startswith("/"):
        raise PathRejected("unsupported request address")
    # Fast path: no escapes, no dot or empty segments, nothing to encode -> already canonical.
    if _PLAIN_PATH.fullmatch(path) and "/." not in path and "//" not in path:
        return path
    if not path.isascii():
        raise PathRejected("non-ASCII character in path (it must be percent-encoded)")
    forbidden = _FORBIDDEN_RAW.search(path)
    if forbidden is not None:
        if forbidden.group() == "\\":
            # Not in RFC 3986 3.3, but the WHATWG URL Standard and Windows stacks read "\" as "/".
            raise PathRejected("backslash in path")
        raise PathRejected("control character or space in path")
    if "%" in path:
        path = _normalise_escapes(path)
    return _remove_dot_segments(path.translate(_ENCODE_RAW))


def _normalise_escapes(path: str) -> str:
    """Decode unreserved escapes, uppercase the others; one pass, so each is decoded once."""
    pieces = path.split("%")
    out = [pieces[0]]
    for piece in pieces[1:]:
        pair = piece[:2]
        canonical = _ESCAPES.get(pair)
        if canonical is None:
            raise PathRejected(_REFUSED_ESCAPES.get(pair, "malformed percent-encoding in path"))
        out.append(canonical)
        out.append(piece[2:])
    return "".join(out)


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 5.2.4, plus collapsing empty segments; a climb above the root is refused."""
    segments = path.split("/")
    kept: list[str] = []
    for segment in segments:
        if segment == "" or segment == ".":
            continue
        if segment == "..":
            if not kept:
                raise PathRejected("path goes above the root")
            kept.pop()
            continue
        if ";" in segment and segment.partition(";")[0] in (".", ".."):
            # Servlet containers drop ";params" before resolving dots, so "/public/..;/admin"
            # reaches "/admin" upstream (Orange Tsai, "Breaking Parser Logic", 2018).
            raise PathRejected("dot segment with parameters in path")
        kept.append(segment)
    if not kept:
        return "/"
    trailing = "/" if segments[-1] in ("", ".", "..") else ""
    return "/" + "/".join(kept) + trailing


# The proxy's own namespace on every host (see ztproxy.endpoints): never forwarded upstream.
PROXY_PREFIXES = ("/.ztproxy/", "/.well-known/ztproxy/")
_PROXY_EXACT = frozenset({"/.ztproxy", "/.well-known/ztproxy"})


def is_proxy_path(path: str) -> bool:
    return path.startswith(PROXY_PREFIXES) or path in _PROXY_EXACT


@functools.lru_cache(maxsize=4096)  # hot path; a client flooding distinct hosts only evicts
def normalize_host(value: str) -> str | None:
    """A Host header value -> lowercase host without port or trailing dot; None if invalid.

    ``Wiki.Corp.Example.:443`` -> ``wiki.corp.example``; ``[0:0::1]:8080`` -> ``[::1]``.
    """
    # isascii first: str.lower() maps some non-ASCII letters to ASCII ("\u212a" -> "k").
    if not value or len(value) > _MAX_HOST_VALUE or not value.isascii():
        return None
    if value.startswith("["):
        close = value.find("]")
        if close < 0:
            return None
        host = _ipv6_literal(value[1:close])
        port_part = value[close + 1 :]
    else:
        name, colon, port = value.partition(":")
        host = _host_name(name)
        port_part = colon + port
    if host is None:
        return None
    if port_part and not (port_part.startswith(":") and _valid_port(port_part[1:])):
        return None
    return host


def _ipv6_literal(inner: str) -> str | None:
    # RFC 3986 3.2.2; zone ids (RFC 6874) and IPvFuture have no business in a Host header.
    if "%" in inner:
        return None
    try:
        address = ipaddress.IPv6Address(inner)
    except ValueError:
        return None
    return f"[{address.compressed}]"


def _host_name(name: str) -> str | None:
    name = name.lower()
    name = name.removesuffix(".")  # RFC 1034 3.1: "example.com." is the same name, fully qualified
    if len(name) > _MAX_HOST_NAME or not _HOST_NAME.fullmatch(name):
        return None
    return name


def _valid_port(port: str) -> bool:
    return 0 < len(port) <= 5 and port.isdigit() and 0 < int(port) <= 65535


class _PrefixIndex(Generic[T]):
    """Path prefixes of one host tier, matched on segment boundaries, longest first."""

    __slots__ = ("_by_prefix", "_longest")

    def __init__(self) -> None:
        self._by_prefix: dict[str, T] = {}
        self._longest = 0  # no candidate longer than this can be in the dict

    def add(self, prefix: str, value: T) -> bool:
        """Add a route; False if the prefix is already taken."""
        if prefix in self._by_prefix:
            return False
        self._by_prefix[prefix] = value
        self._longest = max(self._longest, len(prefix))
        return True

    def lookup(self, path: str) -> T | None:
        # Candidates, longest first, are the path itself then, at each "/" from the right,
        # the prefix with and without that "/": "/a/b" -> "/a/b", "/a/", "/a", "/".
        # Prefix "/api" thus matches "/api" and "/api/x" but never "/apix".
        by_prefix = self._by_prefix
        longest = self._longest
        # Values are never None (see RouteTable), so one .get() per candidate is enough.
        if len(path) <= longest:
            found = by_prefix.get(path)
            if found is not None:
                return found
        # Starting at the longest registered prefix bounds the work for very long paths.
        slash = path.rfind("/", 0, longest + 1)
        while slash >= 0:
            found = by_prefix.get(path[: slash + 1])
            if found is None:
                found = by_prefix.get(path[:slash])
            if found is not None:
                return found
            slash = path.rfind("/", 0, slash)
        return None


class RouteTable(Generic[T]):
    """Routes compiled into dicts: (host pattern or None, path prefix, value) -> lookups.

    Host tiers, first that has a matching prefix wins: exact host, then wildcards
    ``*.suffix`` from the longest suffix to the shortest, then routes for any host (None).
    Within a tier the longest matching path prefix wins. Values must not be None.
    """

    __slots__ = ("_any_host", "_exact", "_size", "_wildcard")

    def __init__(self, entries: Iterable[tuple[str | None, str, T]]) -> None:
        self._exact: dict[str, _PrefixIndex[T]] = {}
        self._wildcard: dict[str, _PrefixIndex[T]] = {}  # keyed by the suffix after "*."
        self._any_host: _PrefixIndex[T] | None = None
        self._size = 0
        for host, prefix, value in entries:
            self._add(host, prefix, value)

    def _add(self, host: str | None, prefix: str, value: T) -> None:
        # A safety net: config validation reports these properly, with the YAML path.
        if value is None:
            raise ValueError("a route value cannot be None: None means no route")
        try:
            canonical = parse_target(prefix).path
        except PathRejected as exc:
            raise ValueError(f"route prefix {prefix!r} is invalid: {exc.detail}") from None
        if canonical != prefix:
            raise ValueError(f"route prefix {prefix!r} is not canonical, use {canonical!r}")
        index: _PrefixIndex[T]
        if host is None:
            if self._any_host is None:
                self._any_host = _PrefixIndex()
            index = self._any_host
        elif host.startswith("*."):
            suffix = host[2:]
            if suffix.startswith("[") or normalize_host(suffix) != suffix:
                raise ValueError(f"route host {host!r} is not a valid wildcard")
            index = self._wildcard.setdefault(suffix, _PrefixIndex())
        else:
            if normalize_host(host) != host:
                raise ValueError(f"route host {host!r} is not a lowercase host name or address")
            index = self._exact.setdefault(host, _PrefixIndex())
        if not index.add(prefix, value):
            raise ValueError(f"duplicate route for host {host!r} and prefix {prefix!r}")
        self._size += 1

    def match(self, host: str | None, path: str) -> T | None:
        """The route for a host (from :func:`normalize_host`) and canonical path, or None.

        None means 404: an unknown host never falls back to some other route.
        """
        if host is not None:
            index = self._exact.get(host)
            if index is not None:
                found = index.lookup(path)
                if found is not None:
                    return found
            if self._wildcard:
                # Strip one label at a time: longest suffix first, and "*.x" never matches "x".
                dot = host.find(".")
                while dot >= 0:
                    index = self._wildcard.get(host[dot + 1 :])
                    if index is not None:
                        found = index.lookup(path)
                        if found is not None:
                            return found
                    dot = host.find(".", dot + 1)
        if self._any_host is not None:
            return self._any_host.lookup(path)
        return None

    def names_host(self, host: str) -> bool:
        """Whether a route names this host (exactly or by wildcard); routes for any host don't count."""
        if host in self._exact:
            return True
        dot = host.find(".")
        while dot >= 0:
            if host[dot + 1 :] in self._wildcard:
                return True
            dot = host.find(".", dot + 1)
        return False

    def __len__(self) -> int:
        return self._size

"""Web origins (RFC 6454): the one a request was addressed to, and the ones a route accepts.

Used to refuse cross-site WebSocket hijacking: a browser sends the session cookie with a
WebSocket upgrade from any page that shares the cookie's site (every host under a
``cookie_domain``, SameSite=Lax included), and the upgrade is not subject to CORS. Only
``Origin`` tells the proxy which page asked. Pure functions; no aiohttp.
"""

from __future__ import annotations

from urllib.parse import urlsplit

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def normalize_origin(value: str) -> str | None:
    """``scheme://host[:port]`` lowercased, default port left out; None for anything else.

    ``null`` (sandboxed frames, file: pages, redirects across origins) is no origin at all:
    it can stand for any site.
    """
    value = value.strip()
    if not value or value == "null" or any(c.isspace() for c in value):
        return None
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/") \
            or parts.query or parts.fragment or parts.username is not None or parts.password is not None:
        return None
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    port_part = "" if port is None or port == _DEFAULT_PORTS[scheme] else f":{port}"
    return f"{scheme}://{host}{port_part}"


def addressed_origin(scheme: str, host_header: str) -> str | None:
    """The origin the client addressed: the scheme it used and its Host header (port included)."""
    return normalize_origin(f"{scheme}://{host_header}") if host_header else None


def origin_allowed(origin: str, addressed: str | None, allowed: frozenset[str]) -> bool:
    """Whether a page of ``origin`` (the Origin header, as sent) may open a socket here."""
    normalized = normalize_origin(origin)
    return normalized is not None and (normalized == addressed or normalized in allowed)

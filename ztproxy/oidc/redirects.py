"""Where a browser may be sent back after signing in: only to the proxy's own hosts.

A return URL is absolute, on the proxy's public scheme and port, and its host is the
public URL's host or one a route names (exactly or by wildcard). A route that answers
any host does not make every host acceptable: that would be an open redirect for any
Host header a client cares to send. Anything else falls back to the public URL.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from yarl import URL

from ztproxy.errors import PathRejected
from ztproxy.routing import RouteTable, normalize_host, parse_target

_FORBIDDEN = frozenset("\\\t\r\n\x00 ")


class ReturnUrls:
    def __init__(self, public_url: str, routes: RouteTable[Any] | Iterable[str]) -> None:
        public = URL(public_url)
        self.public_origin = str(public.origin())
        self.scheme = public.scheme
        self.port = public.port
        self.public_host = normalize_host(public.raw_host or "")
        self._routes = routes if isinstance(routes, RouteTable) else RouteTable((h, "/", h) for h in routes)

    def allowed(self, url: str) -> bool:
        # Checked on the raw text first: browsers read "\\" as "/" and drop tabs and newlines,
        # so "https://good\\@evil" or "https://go\\tod" must never get as far as a parser.
        if not url or len(url) > 8192 or any(c in _FORBIDDEN for c in url) or not url.isascii():
            return False
        try:
            parsed = URL(url, encoded=True)
            port = parsed.port
        except (ValueError, TypeError):
            return False
        if not parsed.is_absolute() or parsed.scheme != self.scheme or parsed.user is not None \
                or parsed.password is not None or port != self.port or parsed.fragment:
            return False
        host = normalize_host(parsed.raw_host or "")
        if host is None:
            return False
        try:
            parse_target(parsed.raw_path or "/")
        except PathRejected:
            return False
        return host == self.public_host or self._routes.names_host(host)

    def for_request(self, host: str | None, path_and_query: str) -> str:
        """The URL of the request being sent to sign in, or the public URL when its host isn't ours."""
        if host is not None:
            authority = host if self.port in (None, 80 if self.scheme == "http" else 443) else f"{host}:{self.port}"
            candidate = f"{self.scheme}://{authority}{path_and_query}"
            if self.allowed(candidate):
                return candidate
        fallback = f"{self.public_origin}{path_and_query}"
        return fallback if self.allowed(fallback) else f"{self.public_origin}/"

    def checked(self, url: str | None) -> str:
        return url if url is not None and self.allowed(url) else f"{self.public_origin}/"

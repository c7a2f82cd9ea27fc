"""The proxy's own paths on every route host: ``/.ztproxy/*`` and ``/.well-known/ztproxy/*``.

They are answered by the proxy and never forwarded upstream, so an app can't shadow
them and a client can't reach an upstream through them. Login, logout, ``me`` and the
JWKS plug in here; until then the namespace answers 404.
"""

from __future__ import annotations

from aiohttp import web

from ztproxy.errors import RouteNotFound
from ztproxy.state import CONTEXT

PROXY_PREFIXES = ("/.ztproxy/", "/.well-known/ztproxy/")
_EXACT = frozenset({"/.ztproxy", "/.well-known/ztproxy"})


def is_proxy_path(path: str) -> bool:
    return path.startswith(PROXY_PREFIXES) or path in _EXACT


def proxy_endpoints(request: web.Request) -> web.StreamResponse | None:
    path = request[CONTEXT].target.path
    if is_proxy_path(path):
        raise RouteNotFound("There is no such ztproxy endpoint.")
    return None

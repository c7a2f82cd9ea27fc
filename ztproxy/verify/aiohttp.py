"""aiohttp middleware: ``request[IDENTITY]`` is the verified caller, or the answer is 401.

    from ztproxy.verify import Verifier
    from ztproxy.verify.aiohttp import IDENTITY, middleware

    verifier = Verifier(issuer="https://ztproxy.corp.example", audience="https://wiki.corp.example",
                        jwks_url="https://ztproxy.corp.example/.well-known/ztproxy/jwks.json")
    app = web.Application(middlewares=[middleware(verifier, exempt=("/healthz",))])

    async def page(request):
        return web.Response(text=f"hello {request[IDENTITY].email}")
"""

from __future__ import annotations

from collections.abc import Iterable

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from ztproxy.verify.verifier import ASSERTION_HEADER, AssertionInvalid, Identity, Verifier

IDENTITY = web.RequestKey("ztproxy_identity", Identity)


def middleware(verifier: Verifier, *, exempt: Iterable[str] = ()) -> Middleware:
    """Paths in ``exempt`` (exact, or a prefix ending in "/") skip verification."""
    exact = frozenset(path for path in exempt if not path.endswith("/"))
    prefixes = tuple(path for path in exempt if path.endswith("/"))

    @web.middleware
    async def verify_assertion(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in exact or request.path.startswith(prefixes or ("\0",)):
            return await handler(request)
        try:
            request[IDENTITY] = await verifier.averify(request.headers.get(ASSERTION_HEADER))
        except AssertionInvalid as exc:
            raise web.HTTPUnauthorized(text=f"unauthorized: {exc}\n",
                                       headers={"WWW-Authenticate": 'Bearer realm="ztproxy"'}) from None
        return await handler(request)

    return verify_assertion

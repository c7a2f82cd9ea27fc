"""The proxy's own paths on every route host: ``/.ztproxy/*`` and ``/.well-known/ztproxy/*``.

They are answered by the proxy and never forwarded upstream, so an app can't shadow
them and a client can't reach an upstream through them. Unknown ones answer 404, and
so do the sign-in ones when no identity provider is configured.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from ztproxy.auth import AUTH, Auth
from ztproxy.errors import RouteNotFound
from ztproxy.forward_auth import Kind, allowed_headers
from ztproxy.grants.pages import access, is_access_path
from ztproxy.grants.service import GRANTS
from ztproxy.me import ME_PATH, me
from ztproxy.oidc.login import CALLBACK_PATH
from ztproxy.oidc.logout import BACKCHANNEL_PATH, FRONTCHANNEL_PATH, LOGOUT_PATH, SIGNED_OUT_PATH, signed_out_page
from ztproxy.routing import is_proxy_path
from ztproxy.signals.receiver import SIGNALS, SSF_EVENTS_PATH
from ztproxy.signing import JWKS_PATH, jwks
from ztproxy.state import RECORD

Endpoint = Callable[[web.Request, Auth], Awaitable[web.StreamResponse]]


async def _signed_out(request: web.Request, auth: Auth) -> web.StreamResponse:
    return signed_out_page()


_SIGN_IN_ENDPOINTS: dict[str, Endpoint] = {
    CALLBACK_PATH: lambda request, auth: auth.login.callback(request),
    LOGOUT_PATH: lambda request, auth: auth.logout.handle(request),
    SIGNED_OUT_PATH: _signed_out,
    BACKCHANNEL_PATH: lambda request, auth: auth.logout.backchannel(request),
    FRONTCHANNEL_PATH: lambda request, auth: auth.logout.frontchannel(request),
}


def proxy_endpoints(request: web.Request) -> Awaitable[web.StreamResponse] | web.StreamResponse | None:
    """Pipeline stage: the proxy's own paths are answered here (asynchronously), others go on."""
    record = request[RECORD]
    ctx = record.context
    path = ctx.target.path
    if not is_proxy_path(path):
        return None
    question = record.question
    if question is not None:
        if question.original is None or question.kind is not Kind.AUTH:
            return None  # the endpoint judged as itself (nothing passes), or a page about the path
        # A calling proxy asking about the proxy's own paths, which are open to all and check
        # what they need themselves: pass, as nobody (it should send them here directly).
        return web.Response(status=200, headers=allowed_headers(ctx.route.config.claim_headers, ()))
    return _answer(request, path)


async def _answer(request: web.Request, path: str) -> web.StreamResponse:
    if path == JWKS_PATH:
        return await jwks(request)
    if path == ME_PATH:
        return await me(request, request.app[AUTH])
    if is_access_path(path):
        return await access(request, request.app[AUTH], request.app[GRANTS])
    if path == SSF_EVENTS_PATH and (signals := request.app[SIGNALS]) is not None:
        return await signals.receive(request)
    endpoint = _SIGN_IN_ENDPOINTS.get(path)
    auth = request.app[AUTH]
    if endpoint is None or auth is None:
        raise RouteNotFound("There is no such ztproxy endpoint.")
    return await endpoint(request, auth)

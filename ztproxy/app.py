"""The app factory: typed shared state, long-lived resources, and THE request pipeline.

A request travels the pipeline top to bottom; this list is the whole data path:

    request_id        request id in every log event (access event: AccessLogger) (telemetry)
    error_pages       every RequestError -> HTML/JSON page            (pages)
    intake            header budget, canonical path, host, client ip,
                      route match -> RequestContext                   (intake)
    proxy_endpoints   /.ztproxy/* answered here, never forwarded      (endpoints)
    authorize         policy.evaluate -> allow, or 403 page           (authorize)
    handle            forward upstream: HTTP streaming or WebSocket   (upstream, websocket)
"""

from __future__ import annotations

from aiohttp import web

from ztproxy.authorize import authorize
from ztproxy.config.schema import Config
from ztproxy.context import compile_routes
from ztproxy.endpoints import proxy_endpoints
from ztproxy.headers import parse_networks
from ztproxy.intake import intake
from ztproxy.pages import error_pages
from ztproxy.state import CONFIG, CONTEXT, INTAKE, ROUTES, IntakeSettings
from ztproxy.telemetry import add_request_id, request_id
from ztproxy.upstream import client_session_ctx, forward
from ztproxy.websocket import is_websocket_upgrade, proxy_websocket

PIPELINE = (request_id, error_pages, intake, proxy_endpoints, authorize)


async def handle(request: web.Request) -> web.StreamResponse:
    if request[CONTEXT].route.config.websockets and is_websocket_upgrade(request):
        return await proxy_websocket(request)
    return await forward(request)


async def _defer_expect(request: web.Request) -> None:
    """Don't answer ``Expect: 100-continue`` before authorization; ``forward`` does it."""


def build_app(config: Config) -> web.Application:
    app = web.Application(middlewares=PIPELINE)
    app[CONFIG] = config
    app[ROUTES] = compile_routes(config)
    limits = config.server.limits
    app[INTAKE] = IntakeSettings(
        scheme="https" if config.server.tls else "http",
        trusted_proxies=parse_networks(config.server.trusted_proxies),
        max_header_bytes=limits.max_header_bytes,
        max_request_body=limits.max_request_body,
    )
    app.cleanup_ctx.append(client_session_ctx)
    app.on_response_prepare.append(add_request_id)
    app.router.add_route("*", "/{path:.*}", handle, expect_handler=_defer_expect)
    return app

"""The app factory: typed shared state, long-lived resources, and THE request pipeline.

A request travels ``STAGES`` top to bottom, then ``handle``: that is the whole data path.
The driver in ``pipeline.py`` gives each request its record (``state.RequestRecord``: its
id, then what each stage finds), turns errors into pages and logs clients that left (499);
``telemetry.AccessLogger`` writes the access event once the response is out. Stages are
siblings: each reads and writes the record and imports the shared layer below it (``auth``,
``posture.service``, ``risk_service``, ``signing``, ``upstream``, ``state``), never another stage.
"""

from __future__ import annotations

from aiohttp import web

from ztproxy.answers import answer
from ztproxy.auth import auth_ctx
from ztproxy.authenticate import authenticate
from ztproxy.authorize import authorize
from ztproxy.bearer import bearer_ctx
from ztproxy.config.schema import Config
from ztproxy.context import endpoints_route, route_entries
from ztproxy.device import assess_device
from ztproxy.endpoints import proxy_endpoints
from ztproxy.forward import forward
from ztproxy.forward_grpc import forward_grpc
from ztproxy.grants.service import grants_ctx
from ztproxy.headers import header_rules, is_websocket_upgrade, parse_networks
from ztproxy.intake import intake
from ztproxy.pipeline import Handler, Stage, build_pipeline
from ztproxy.policy import policy_hash
from ztproxy.posture.service import posture_ctx
from ztproxy.risk_service import risk_ctx
from ztproxy.routing import RouteTable
from ztproxy.service_revocations import revocations_ctx
from ztproxy.session_risk import assess_risk
from ztproxy.signals.receiver import signals_ctx
from ztproxy.signing import assertion_ctx
from ztproxy.state import CONFIG, INTAKE, POLICY_HASH, RECORD, ROUTE_LIST, ROUTES, IntakeSettings
from ztproxy.upstream import client_session_ctx
from ztproxy.upstream_identity import assert_identity
from ztproxy.websocket import proxy_websocket
from ztproxy.workloads.service import workloads_ctx

# The app's pipeline, for the dispatcher of ``reload.LiveApp`` that serves this app's configuration.
PIPELINE = web.AppKey[Handler]("pipeline")

STAGES: tuple[Stage, ...] = (
    intake,            # header budget, canonical path, host, client ip, route -> RequestContext
                       # (for forward-auth: of the original request the calling proxy describes)
    proxy_endpoints,   # /.ztproxy/* answered by the proxy (callback, logout...), never forwarded
    authenticate,      # session cookie -> live session, re-verified at the IdP when due;
                       # bearer token, else workload certificate -> the calling service
    assess_device,     # client certificate, signed posture, inventory, MDM -> the device and its posture
    assess_risk,       # the session's network, browser and device vs. its context -> signals, risk level
    authorize,         # policy.evaluate -> allow, sign-in / step-up redirect, 401, or the 403 page
    assert_identity,   # the signed assertion and identity headers the upstream will receive
)


async def handle(request: web.Request) -> web.StreamResponse:
    """The end of the pipeline: forward upstream, as HTTP streaming, gRPC or a WebSocket; or, for
    forward-auth, answer the calling proxy."""
    record = request[RECORD]
    if record.question is not None:
        return await answer(request)
    route = record.context.route.config
    if route.upstream_protocol == "grpc":
        return await forward_grpc(request)
    if route.websockets and is_websocket_upgrade(request.headers):
        return await proxy_websocket(request)
    return await forward(request)


async def _defer_expect(request: web.Request) -> None:
    """Don't answer ``Expect: 100-continue`` before authorization; ``forward`` does it."""


def build_app(config: Config) -> web.Application:
    app = web.Application()
    app[CONFIG] = config
    routes = list(route_entries(config))
    app[ROUTES] = RouteTable(routes)
    app[ROUTE_LIST] = tuple(route for _, _, route in routes)
    app[POLICY_HASH] = policy_hash({route.name: route.policy for _, _, route in routes})
    limits = config.server.limits
    app[INTAKE] = IntakeSettings(
        scheme="https" if config.server.tls else "http",
        trusted_proxies=parse_networks(config.server.trusted_proxies),
        max_header_bytes=limits.max_header_bytes,
        max_request_body=limits.max_request_body,
        endpoints_route=endpoints_route(),
        header_rules=header_rules(owned=_owned_headers(config), separators=config.server.headers_with_separators),
    )
    app.cleanup_ctx.append(client_session_ctx)
    app.cleanup_ctx.append(auth_ctx)
    app.cleanup_ctx.append(bearer_ctx)
    app.cleanup_ctx.append(revocations_ctx)
    app.cleanup_ctx.append(grants_ctx)
    app.cleanup_ctx.append(signals_ctx)
    app.cleanup_ctx.append(workloads_ctx)
    app.cleanup_ctx.append(risk_ctx)
    app.cleanup_ctx.append(assertion_ctx)
    app.cleanup_ctx.append(posture_ctx)
    app[PIPELINE] = build_pipeline(STAGES, handle)
    add_catch_all(app, app[PIPELINE])
    return app


def _owned_headers(config: Config) -> list[str]:
    """Request headers only the proxy may set, besides X-Ztproxy-*: no client spelling of them passes."""
    owned = [name for route in config.routes for name in route.claim_headers]
    if config.devices.signed is not None:
        owned.append(config.devices.signed.header)  # a posture token is a credential: the app never sees it
    return owned


def add_catch_all(app: web.Application, handler: Handler) -> None:
    """Every method and path (newlines included) goes to ``handler``; intake judges the path."""
    app.router.add_route("*", r"/{path:[\s\S]*}", handler, expect_handler=_defer_expect)

"""The admin listener: liveness (/healthz), readiness (/readyz) and the assertion JWKS, on its own address."""

from __future__ import annotations

from aiohttp import web

from ztproxy.config.schema import Config
from ztproxy.identity import JWKS_PATH, assertion_ctx, jwks
from ztproxy.state import CONFIG, READINESS, Readiness


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    readiness = request.app[READINESS]
    if readiness.ready:
        return web.json_response({"status": "ready"})
    return web.json_response({"status": "not-ready", "reasons": readiness.reasons}, status=503)


def build_admin_app(readiness: Readiness, config: Config) -> web.Application:
    app = web.Application(handler_args={"access_log": None})
    app[READINESS] = readiness
    app[CONFIG] = config
    app.cleanup_ctx.append(assertion_ctx)  # the same key directory as the proxy's workers
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get(JWKS_PATH, jwks)
    return app

"""The admin listener: liveness (/healthz) and readiness (/readyz), on its own address."""

from __future__ import annotations

from aiohttp import web

from ztproxy.state import READINESS, Readiness


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    readiness = request.app[READINESS]
    if readiness.ready:
        return web.json_response({"status": "ready"})
    return web.json_response({"status": "not-ready", "reasons": readiness.reasons}, status=503)


def build_admin_app(readiness: Readiness) -> web.Application:
    app = web.Application(handler_args={"access_log": None})
    app[READINESS] = readiness
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app

"""The admin listener: liveness (/healthz), readiness (/readyz), metrics (/metrics) and the assertion JWKS.

With several workers it runs in the supervisor: /metrics then reads each worker's
exposition from its private unix socket and merges them, one ``worker`` label per process.
/readyz also says whether each IdP answers a check made here every few seconds: an IdP
outage leaves the replica ready (signed-in users keep working; no replica could sign anyone
in), but shows in the answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import aiohttp
from aiohttp import web

from ztproxy.admin_api import add_admin_api
from ztproxy.config.schema import Config
from ztproxy.metrics import CONTENT_TYPE, exposition, merge_expositions
from ztproxy.oidc.provider import Provider
from ztproxy.oidc.reachability import Reachability
from ztproxy.signing import JWKS_PATH, assertion_ctx, jwks
from ztproxy.state import CONFIG, READINESS, Readiness

# (worker label, its exposition socket) of each running worker; None in a single process.
WorkerSockets = Callable[[], list[tuple[str, str]]]
WORKER_SOCKETS = web.AppKey[WorkerSockets | None]("worker_sockets")
_WORKER_READ_TIMEOUT = 2.0  # a busy worker still answers within it; a stuck one is left out
_MAX_EXPOSITION = 16 * 1024 * 1024
IDP_VIEWS = web.AppKey[dict[str, Reachability]]("idp_views")
READINESS_CHECK_INTERVAL = 2.0  # seconds between this listener's checks of each IdP


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    readiness = request.app[READINESS]
    views = request.app[IDP_VIEWS]
    idps = {"identity_providers": {name: "reachable" if view.last_known_reachable else "unreachable"
                                   for name, view in views.items()}} if views else {}
    if readiness.ready:
        return web.json_response({"status": "ready", **idps})
    return web.json_response({"status": "not-ready", "reasons": readiness.reasons, **idps}, status=503)


async def idp_views_ctx(app: web.Application) -> AsyncIterator[None]:
    """Checks of each configured IdP for /readyz, as long as the admin listener runs."""
    http = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(), trust_env=False,
                                 headers={"User-Agent": "ztproxy"})
    providers = [Provider(config, http) for config in app[CONFIG].identity_providers]
    app[IDP_VIEWS] = {provider.name: provider.reachability for provider in providers}
    watching = [asyncio.create_task(provider.reachability.watch(interval=READINESS_CHECK_INTERVAL, always=True))
                for provider in providers]
    try:
        yield
    finally:
        for task in watching:
            task.cancel()
        await asyncio.gather(*watching, return_exceptions=True)
        await http.close()


async def metrics(request: web.Request) -> web.Response:
    worker_sockets = request.app[WORKER_SOCKETS]
    if worker_sockets is None:
        body = exposition()
    else:
        workers = worker_sockets()
        texts = await asyncio.gather(*(_read_exposition(path) for _, path in workers))
        body = merge_expositions([("supervisor", exposition().decode()),
                                  *((label, text) for (label, _), text in zip(workers, texts, strict=True))])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE, "Cache-Control": "no-store"})


async def _read_exposition(path: str) -> str | None:
    """A worker's exposition (it writes it and closes); None when it does not answer whole in time."""
    try:
        async with asyncio.timeout(_WORKER_READ_TIMEOUT):
            reader, writer = await asyncio.open_unix_connection(path)
            try:
                data = bytearray()
                while len(data) <= _MAX_EXPOSITION and (chunk := await reader.read(1 << 16)):
                    data += chunk
            finally:
                writer.close()
    except (OSError, TimeoutError):
        return None
    return data.decode("utf-8", "replace") if len(data) <= _MAX_EXPOSITION else None


def build_admin_app(readiness: Readiness, config: Config, *,
                    worker_sockets: WorkerSockets | None = None) -> web.Application:
    app = web.Application(handler_args={"access_log": None})
    app[READINESS] = readiness
    app[CONFIG] = config
    app[WORKER_SOCKETS] = worker_sockets
    app.cleanup_ctx.append(assertion_ctx)  # the same key directory as the proxy's workers
    app.cleanup_ctx.append(idp_views_ctx)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get(JWKS_PATH, jwks)
    app.router.add_get("/metrics", metrics)
    add_admin_api(app, config)  # /admin/*, behind server.admin_token
    return app

"""The aiohttp, ASGI and WSGI middlewares: identity on the request, or 401."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from ztproxy.verify import ASSERTION_HEADER
from ztproxy.verify.aiohttp import IDENTITY, middleware
from ztproxy.verify.asgi import SCOPE_KEY
from ztproxy.verify.asgi import AssertionMiddleware as AsgiMiddleware
from ztproxy.verify.testing import TestIssuer
from ztproxy.verify.wsgi import ENVIRON_KEY
from ztproxy.verify.wsgi import AssertionMiddleware as WsgiMiddleware

AUDIENCE = "https://app.corp.example"


async def test_aiohttp_middleware(aiohttp_client: Callable[..., Any]) -> None:
    issuer = TestIssuer(audience=AUDIENCE)

    async def whoami(request: web.Request) -> web.Response:
        return web.Response(text=request[IDENTITY].subject)

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application(middlewares=[middleware(issuer.verifier(), exempt=("/healthz",))])
    app.router.add_get("/", whoami)
    app.router.add_get("/healthz", health)
    client: TestClient[web.Request, web.Application] = await aiohttp_client(app)
    response = await client.get("/", headers={ASSERTION_HEADER: issuer.mint(sub="alice")})
    assert response.status == 200
    assert await response.text() == "alice"
    for headers in ({}, {ASSERTION_HEADER: "forged"}, {ASSERTION_HEADER: issuer.mint(lifetime=-300)}):
        response = await client.get("/", headers=headers)
        assert response.status == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert (await client.get("/healthz")).status == 200


def _asgi_call(app: Any, path: str, headers: list[tuple[bytes, bytes]]) -> tuple[int, dict[str, Any]]:
    sent: list[dict[str, Any]] = []
    seen: dict[str, Any] = {}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(dict(message))

    scope = {"type": "http", "path": path, "headers": headers, "method": "GET"}
    asyncio.run(app(scope, receive, send))
    seen.update(scope)
    return sent[0]["status"], seen


def test_asgi_middleware() -> None:
    issuer = TestIssuer(audience=AUDIENCE)

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    app = AsgiMiddleware(inner, issuer.verifier(), exempt=("/public/",))
    status, scope = _asgi_call(app, "/", [(ASSERTION_HEADER.lower().encode(), issuer.mint(sub="bob").encode())])
    assert status == 200
    assert scope[SCOPE_KEY].subject == "bob"
    assert _asgi_call(app, "/", [])[0] == 401
    other = TestIssuer(audience=AUDIENCE)  # a key the app does not trust
    assert _asgi_call(app, "/", [(ASSERTION_HEADER.lower().encode(), other.mint().encode())])[0] == 401
    assert _asgi_call(app, "/public/x", [])[0] == 200


def test_wsgi_middleware() -> None:
    issuer = TestIssuer(audience=AUDIENCE)
    statuses: list[str] = []

    def inner(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return [environ[ENVIRON_KEY].subject.encode()]

    app = WsgiMiddleware(inner, issuer.verifier(), exempt=("/healthz",))

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        statuses.append(status)

    body = app({"PATH_INFO": "/", "HTTP_X_ZTPROXY_JWT_ASSERTION": issuer.mint(sub="carol")}, start_response)
    assert b"".join(body) == b"carol"
    app({"PATH_INFO": "/"}, start_response)
    app({"PATH_INFO": "/", "HTTP_X_ZTPROXY_JWT_ASSERTION": "x.y.z"}, start_response)
    assert statuses == ["200 OK", "401 Unauthorized", "401 Unauthorized"]

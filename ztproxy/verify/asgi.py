"""ASGI middleware: ``scope["ztproxy.identity"]`` is the verified caller, or the answer is 401.

    from ztproxy.verify import Verifier
    from ztproxy.verify.asgi import AssertionMiddleware

    verifier = Verifier(issuer="https://ztproxy.corp.example", audience="https://api.corp.example",
                        jwks_url="https://ztproxy.corp.example/.well-known/ztproxy/jwks.json")
    app = AssertionMiddleware(app, verifier, exempt=("/healthz",))
    # in a Starlette/FastAPI handler: request.scope["ztproxy.identity"].subject
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from ztproxy.verify.verifier import ASSERTION_HEADER, AssertionInvalid, Verifier

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

SCOPE_KEY = "ztproxy.identity"
_HEADER = ASSERTION_HEADER.lower().encode("latin-1")


class AssertionMiddleware:
    def __init__(self, app: ASGIApp, verifier: Verifier, *, exempt: Iterable[str] = ()) -> None:
        self.app = app
        self.verifier = verifier
        self.exact = frozenset(path for path in exempt if not path.endswith("/"))
        self.prefixes = tuple(path for path in exempt if path.endswith("/"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or self._exempt(scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        token = next((value.decode("latin-1") for name, value in scope.get("headers", ()) if name == _HEADER), None)
        try:
            scope[SCOPE_KEY] = await self.verifier.averify(token)
        except AssertionInvalid as exc:
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            body = f"unauthorized: {exc}\n".encode()
            await send({"type": "http.response.start", "status": 401,
                        "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                                    (b"www-authenticate", b'Bearer realm="ztproxy"'),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)

    def _exempt(self, path: str) -> bool:
        return path in self.exact or any(path.startswith(prefix) for prefix in self.prefixes)

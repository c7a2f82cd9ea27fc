"""WSGI middleware: ``environ["ztproxy.identity"]`` is the verified caller, or the answer is 401.

    from ztproxy.verify import Verifier
    from ztproxy.verify.wsgi import AssertionMiddleware

    verifier = Verifier(issuer="https://ztproxy.corp.example", audience="https://wiki.corp.example",
                        jwks_url="https://ztproxy.corp.example/.well-known/ztproxy/jwks.json")
    app.wsgi_app = AssertionMiddleware(app.wsgi_app, verifier, exempt=("/healthz",))   # Flask
    # in a view: request.environ["ztproxy.identity"].email
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from ztproxy.verify.verifier import ASSERTION_HEADER, AssertionInvalid, Verifier

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

ENVIRON_KEY = "ztproxy.identity"
_ENVIRON_HEADER = "HTTP_" + ASSERTION_HEADER.upper().replace("-", "_")


class AssertionMiddleware:
    def __init__(self, app: WSGIApp, verifier: Verifier, *, exempt: Iterable[str] = ()) -> None:
        self.app = app
        self.verifier = verifier
        self.exact = frozenset(path for path in exempt if not path.endswith("/"))
        self.prefixes = tuple(path for path in exempt if path.endswith("/"))

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path in self.exact or any(path.startswith(prefix) for prefix in self.prefixes):
            return self.app(environ, start_response)
        try:
            environ[ENVIRON_KEY] = self.verifier.verify(environ.get(_ENVIRON_HEADER))
        except AssertionInvalid as exc:
            body = f"unauthorized: {exc}\n".encode()
            start_response("401 Unauthorized", [("Content-Type", "text/plain; charset=utf-8"),
                                                ("WWW-Authenticate", 'Bearer realm="ztproxy"'),
                                                ("Content-Length", str(len(body)))])
            return [body]
        return self.app(environ, start_response)

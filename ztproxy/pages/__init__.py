"""User-facing pages: every RequestError becomes an HTML page or, for API clients, JSON.

This is the one place where errors are mapped to HTTP responses. Pages are escaped
templates; they show plain words and the request id, never stack traces or
internal addresses.
"""

from __future__ import annotations

import html
from importlib import resources
from string import Template

import orjson
from aiohttp import web

from ztproxy.errors import (
    BadRequest,
    ExpectationFailed,
    HeadersTooLarge,
    PayloadTooLarge,
    RequestError,
)
from ztproxy.pages.grpc import grpc_refusal, is_grpc
from ztproxy.state import RECORD, ServiceCaller

# Every response the proxy makes itself on the proxy listener (pages, JSON errors, redirects):
# nothing of it may be framed (clickjacking), cached, sniffed into another type, or send the
# address it was shown at to the next site (a sign-in redirect carries the app's URL).
SECURITY_HEADERS = (
    # Pages use inline styles and nothing else: no scripts, images, frames or plugins.
    ("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; "
                                "base-uri 'none'"),
    ("X-Frame-Options", "DENY"),  # for browsers without CSP frame-ancestors
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-store"),
    ("X-Content-Type-Options", "nosniff"),
)


def secure(response: web.StreamResponse) -> web.StreamResponse:
    """Add ``SECURITY_HEADERS`` to one of the proxy's own responses (a header it set itself stays)."""
    headers = response.headers
    for name, value in SECURITY_HEADERS:
        headers.setdefault(name, value)
    if "frame-ancestors 'none'" not in headers["Content-Security-Policy"]:
        # A page that lets one origin frame it (front-channel logout): X-Frame-Options can
        # only say DENY or SAMEORIGIN, and would overrule it in browsers without CSP.
        del headers["X-Frame-Options"]
    return response


_ERROR_TEMPLATE = Template(resources.files(__package__).joinpath("error.html").read_text(encoding="utf-8"))


def wants_json(accept: str, requested_with: str = "") -> bool:
    """API clients (JSON Accept, XHR) get JSON; browsers and everything else get HTML."""
    if requested_with.lower() == "xmlhttprequest":
        return True
    accept = accept.lower()
    if "text/html" in accept:
        return False
    return "json" in accept


def error_response(error: RequestError, *, request_id: str, accept: str = "", requested_with: str = "",
                   close: bool = False) -> web.Response:
    """Render ``error`` for the client; ``close`` also ends the connection (after a bad request)."""
    detail = error.detail or error.title
    if wants_json(accept, requested_with):
        fields = {"error": error.code, "status": error.status, "message": detail, "hint": error.hint,
                  "request_id": request_id}
        if error.link is not None:
            fields["link"] = error.link[0]
        body = orjson.dumps(fields)
        response = web.Response(status=error.status, body=body, content_type="application/json")
    else:
        page = _ERROR_TEMPLATE.substitute(
            status=error.status, title=html.escape(error.title), detail=html.escape(detail),
            hint=html.escape(error.hint), request_id=html.escape(request_id),
            link="" if error.link is None else
            f'<p><a href="{html.escape(error.link[0])}">{html.escape(error.link[1])}</a></p>')
        response = web.Response(status=error.status, text=page, content_type="text/html")
    if request_id != "-":
        response.headers["X-Request-Id"] = request_id
    for name, value in error.headers:
        response.headers[name] = value
    secure(response)
    if close:
        response.force_close()
    return response


def page_for(request: web.Request, error: RequestError) -> web.Response:
    """The page for ``error``, in the format this client asked for; a gRPC status on a gRPC route."""
    headers = request.headers
    # After a malformed request the stream can't be trusted to be in sync: close it.
    close = isinstance(error, (BadRequest, HeadersTooLarge, ExpectationFailed, PayloadTooLarge))
    record = request.get(RECORD)
    route = record.intake.route if record is not None and record.intake is not None else None
    if (route is not None and route.config.upstream_protocol == "grpc") or is_grpc(headers.get("Content-Type", "")):
        response = grpc_refusal(error, request_id=record.request_id if record is not None else "-")
        secure(response)
        if close:
            response.force_close()
        return response
    accept = headers.get("Accept", "")
    if headers.get("Authorization", "").partition(" ")[0].lower() in ("bearer", "dpop") or \
            (record is not None and isinstance(record.caller, ServiceCaller)):
        accept = "application/json"  # a service (access token, workload certificate): never an HTML page
    return error_response(error, request_id=record.request_id if record is not None else "-",
                          accept=accept, requested_with=headers.get("X-Requested-With", ""), close=close)

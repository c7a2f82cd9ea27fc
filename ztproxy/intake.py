"""Intake: turn a raw request into a trusted, canonical RequestContext, or refuse it.

Checks the header budget (431), canonicalises the request target (400 on encoded
slashes, control characters, bad escapes...), normalises the host, works out the
client address from trusted proxies only, and matches the route (404 for an unknown
host: never "the first route"). Everything after this stage sees only the context.

A forward-auth request (``forward_auth``) is taken in as the original request it asks
about, described by a trusted calling proxy: its method, scheme, host and target go
through the same checks and route lookup. Asked by anyone else, it is judged as a
request for the endpoint itself, which no route allows.
"""

from __future__ import annotations

from itertools import chain

from aiohttp import web

from ztproxy.context import RequestContext
from ztproxy.errors import BadRequest, ExpectationFailed, HeadersTooLarge, PayloadTooLarge, RouteNotFound
from ztproxy.forward_auth import describe, endpoint_kind
from ztproxy.headers import REJECT, forwarded_for
from ztproxy.routing import is_proxy_path, normalize_host, parse_target
from ztproxy.state import INTAKE, RECORD, ROUTES

# Each header line costs its name, value, ": " and CRLF.
_HEADER_OVERHEAD = 4


def intake(request: web.Request) -> None:
    app = request.app
    settings = app[INTAKE]
    raw_headers = request.raw_headers
    size = sum(map(len, chain.from_iterable(raw_headers))) + _HEADER_OVERHEAD * len(raw_headers)
    if size > settings.max_header_bytes:
        raise HeadersTooLarge(f"The request headers are {size} bytes; the limit is {settings.max_header_bytes}.")

    rules = settings.header_rules
    if rules.separators == REJECT and (name := rules.first_refused(request.headers)) is not None:
        raise BadRequest(f"The header {name[:64]!r} is refused: its name has '_' or '.' in it, "
                         "or spells a header the proxy sets another way.")

    target = parse_target(request.raw_path)
    headers = request.headers
    hosts = headers.getall("Host", ())
    if len(hosts) > 1:
        raise BadRequest("More than one Host header.")  # RFC 9112 3.2: must be rejected
    host_header = target.authority or (hosts[0] if hosts else "")
    if not host_header and request.version >= (1, 1):
        raise BadRequest("The Host header is missing.")  # RFC 9112 3.2
    host = normalize_host(host_header) if host_header else None
    if host_header and host is None:
        raise BadRequest("The Host header is not a valid host name.")

    expect = headers.get("Expect")
    if expect is not None and expect.strip().lower() != "100-continue":
        raise ExpectationFailed()
    limit = settings.max_request_body
    if limit is not None and (request.content_length or 0) > limit:
        raise PayloadTooLarge(f"The request body is larger than {limit} bytes.")

    trusted = settings.trusted_proxies
    forwarded = forwarded_for(request.remote or "", headers.getall("X-Forwarded-For", ()) if trusted else (),
                              trusted)
    record = request[RECORD]
    method, scheme = request.method, settings.scheme
    route = None
    if target.path.startswith("/.ztproxy/") and (kind := endpoint_kind(target.path)) is not None:
        record.question = question = describe(kind, raw_path=request.raw_path, query=target.query,
                                              method=method, headers=headers, trusted=forwarded.peer_trusted,
                                              scheme=scheme)
        original = question.original
        if question.problem is not None:
            raise BadRequest(question.problem)
        if original is None:
            route = settings.endpoints_route  # the endpoint itself: nothing passes it
        else:
            method, scheme, host_header = original.method, original.scheme, original.authority
            target = parse_target(original.target)
            host = normalize_host(host_header) if host_header else None
            if host is None:
                raise BadRequest("The original request's host is missing or not a valid host name.")

    if route is None:
        route = app[ROUTES].match(host, target.path)
    if route is None:
        # The proxy's own endpoints (the sign-in callback...) answer on any host.
        if not is_proxy_path(target.path):
            raise RouteNotFound()
        route = settings.endpoints_route

    record.intake = RequestContext(
        request_id=record.request_id,
        method=method,
        client_ip=forwarded.client_ip,
        forwarded=forwarded,
        scheme=scheme,
        host=host,
        host_header=host_header,
        target=target,
        route=route,
    )

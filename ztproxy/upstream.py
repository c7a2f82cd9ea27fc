"""Forwarding to the upstream: one connection pool per process, bodies streamed both ways.

HTTP requests go through ``upstream_client.UpstreamPool`` (keep-alive HTTP/1.1, llhttp);
WebSockets through an aiohttp ``ClientSession`` (``websocket.py``). Neither follows
redirects, keeps cookies or decompresses, so the upstream's bytes reach the client
unchanged. Connection failures become 502, timeouts 504, both as pages; a failure after
the response has started aborts the connection rather than pretend a truncated body is
complete. Response bodies of known length up to 64 KiB are the exception to streaming:
read whole, they leave with the headers in one write. A client that disconnects cancels
the handler (server ``handler_cancellation``), which cancels the upstream request.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from ztproxy import tracing
from ztproxy.authenticate import AUTH, SIGNED_IN
from ztproxy.context import CompiledRoute, RequestContext
from ztproxy.cookies import strip_own_cookies_cached
from ztproxy.device import DEVICE
from ztproxy.errors import PayloadTooLarge, UpstreamTimeout, UpstreamUnavailable
from ztproxy.headers import downstream_response_headers, upstream_request_headers
from ztproxy.identity import add_identity
from ztproxy.metrics import REQUESTS
from ztproxy.state import CONFIG, CONTEXT, INTAKE
from ztproxy.upstream_client import Origin, UpstreamError, UpstreamPool, UpstreamTimeoutError

# aiohttp's client adds these unless told not to; the proxy sends only what the client sent.
_SKIP_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
_BODYLESS_STATUS = frozenset({204, 304})
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_WHOLE_BODY_LIMIT = 64 * 1024  # larger or unknown-length bodies are streamed
_POOL_LIMIT = 1000
_POOL_LIMIT_PER_HOST = 0  # unlimited per host within the pool limit


# RFC 9110 8.6: a request with a body-carrying method and no body says so with Content-Length: 0.
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


@dataclass(frozen=True, slots=True)
class Target:
    """Where a route's requests go and how long the upstream may take."""

    origin: Origin
    connect_timeout: float
    read_timeout: float


@dataclass(frozen=True, slots=True)
class Upstream:
    """The process-wide connection pool and WebSocket client, and each route's target."""

    pool: UpstreamPool
    session: aiohttp.ClientSession  # WebSockets only
    timeouts: dict[str, aiohttp.ClientTimeout]  # the routes' timeouts, as the WebSocket client takes them
    targets: dict[str, Target]


UPSTREAM = web.AppKey("upstream", Upstream)


async def client_session_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: open the pooled client on startup, close it on shutdown."""
    connector = aiohttp.TCPConnector(limit=_POOL_LIMIT, limit_per_host=_POOL_LIMIT_PER_HOST,
                                     ttl_dns_cache=60, enable_cleanup_closed=False)
    session = aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        skip_auto_headers=_SKIP_AUTO_HEADERS,
        timeout=aiohttp.ClientTimeout(total=None),
        trust_env=False,
    )
    timeouts = {
        # sock_connect: only opening a new connection is bounded (a pooled one costs no timer).
        route.name: aiohttp.ClientTimeout(total=None, sock_connect=route.connect_timeout,
                                          sock_read=route.read_timeout)
        for route in app[CONFIG].routes
    }
    targets = {
        route.name: Target(origin=origin_of(URL(route.upstream)), connect_timeout=route.connect_timeout,
                           read_timeout=route.read_timeout)
        for route in app[CONFIG].routes
    }
    pool = UpstreamPool(limit=_POOL_LIMIT)
    app[UPSTREAM] = Upstream(pool=pool, session=session, timeouts=timeouts, targets=targets)
    try:
        yield
    finally:
        try:
            await session.close()
        finally:
            await pool.close()


def origin_of(url: URL) -> Origin:
    assert url.scheme in ("http", "https") and url.host is not None and url.port is not None  # config checked
    return Origin(scheme=url.scheme, host=url.host, port=url.port)


def upstream_url(route: CompiledRoute, ctx: RequestContext, *, websocket: bool = False) -> URL:
    """The exact canonical path that was matched and authorised, with the client's query."""
    base = route.upstream
    scheme = base.scheme
    if websocket:
        scheme = "wss" if scheme == "https" else "ws"
    authority = route.upstream_authority
    query = f"?{ctx.target.query}" if ctx.target.query else ""
    return URL(f"{scheme}://{authority}{ctx.target.path}{query}", encoded=True)


def forward_headers(request: web.Request, ctx: RequestContext) -> CIMultiDict[str]:
    headers = upstream_request_headers(
        request.headers,
        rules=request.app[INTAKE].header_rules,
        forwarded=ctx.forwarded,
        proto=ctx.scheme,
        host=ctx.host_header,
        request_id=ctx.request_id,
        upstream_host=None if ctx.route.config.preserve_host else ctx.route.upstream_authority,
    )
    signed_in = request.get(SIGNED_IN)
    if signed_in is not None:
        add_identity(headers, request.app, ctx.route, signed_in, request.get(DEVICE))
    auth = request.app[AUTH]
    if auth is not None and "Cookie" in headers:
        # The session cookie opens the session: the upstream app must never see it.
        kept = [rest for value in headers.getall("Cookie")
                if (rest := strip_own_cookies_cached(value, auth.cookies.names)) is not None]
        headers.popall("Cookie")
        for value in kept:
            headers.add("Cookie", value)
    return headers


class _BodyLimit:
    """Streams the request body upstream, stopping it once it passes ``limit`` bytes."""

    def __init__(self, content: aiohttp.StreamReader, limit: int | None) -> None:
        self._content = content
        self.limit = limit

    async def __aiter__(self) -> AsyncIterator[bytes]:
        seen = 0
        limit = self.limit
        async for chunk in self._content.iter_any():
            seen += len(chunk)
            if limit is not None and seen > limit:
                raise PayloadTooLarge(f"The request body is larger than {limit} bytes.")
            yield chunk


async def forward(request: web.Request) -> web.StreamResponse:
    """The pipeline's handler: send the authorised request upstream and stream the answer back."""
    ctx = request[CONTEXT]
    route = ctx.route
    upstream = request.app[UPSTREAM]
    target = upstream.targets[route.name]
    headers = forward_headers(request, ctx)
    if "Host" not in headers:  # an HTTP/1.0 client with preserve_host; RFC 9112 3.2 wants one
        headers["Host"] = route.upstream_authority

    body: _BodyLimit | None = None
    chunked = False
    if request.body_exists:
        if request.headers.get("Expect", "").lower() == "100-continue" and request.version >= (1, 1):
            # Sent only now, after authorization: a denied client never uploads its body.
            await request.writer.write(_CONTINUE)
        body = _BodyLimit(request.content, request.app[INTAKE].max_request_body)
        if request.content_length is None:
            chunked = True  # the client's chunks end at the proxy; the upstream gets chunks of its own
            headers.popall("Content-Length", None)
    elif request.method in _BODY_METHODS and "Content-Length" not in headers:
        headers["Content-Length"] = "0"

    path = f"{ctx.target.path}?{ctx.target.query}" if ctx.target.query else ctx.target.path
    span = None
    if tracing.TRACER is not None:
        span = tracing.start_client_span(request.method, upstream_url(route, ctx), headers)
    answered = 0
    sent = time.perf_counter()
    try:
        upstream_response = await upstream.pool.request(
            target.origin, request.method, path, headers.items(), body, chunked=chunked,
            connect_timeout=target.connect_timeout, read_timeout=target.read_timeout,
        )
        answered = upstream_response.status
    except UpstreamTimeoutError as exc:
        raise UpstreamTimeout() from exc
    except UpstreamError as exc:
        raise UpstreamUnavailable() from exc
    finally:
        if span is not None:
            tracing.end_client_span(span, answered)
    REQUESTS.observe_upstream(route.name, time.perf_counter() - sent)

    async with upstream_response:
        headers = downstream_response_headers(upstream_response.raw_headers)
        headers["X-Request-Id"] = ctx.request_id
        has_body = request.method != "HEAD" and upstream_response.status not in _BODYLESS_STATUS
        length = upstream_response.content_length
        if has_body and length is not None and length <= _WHOLE_BODY_LIMIT:
            # Small bodies of known length are read whole and leave in one write with the
            # headers; nothing has been sent yet, so a failure here is still a clean page.
            try:
                whole = await upstream_response.read()
            except UpstreamTimeoutError as exc:
                raise UpstreamTimeout() from exc
            except UpstreamError as exc:
                raise UpstreamUnavailable() from exc
            headers.popall("Content-Length", None)
            return web.Response(status=upstream_response.status, reason=upstream_response.reason,
                                body=whole, headers=headers)
        response = web.StreamResponse(status=upstream_response.status, reason=upstream_response.reason,
                                      headers=headers)
        if not has_body:
            # Keep the upstream's Content-Length for HEAD without sending a body.
            await response.prepare(request)
            await response.write_eof()
            return response
        await response.prepare(request)
        try:
            async for chunk in upstream_response.iter_chunks():
                await response.write(chunk)
        except UpstreamError:
            # Headers are out: the only honest signal left is to cut the connection.
            if request.transport is not None:
                request.transport.abort()
            return response
        await response.write_eof()
        return response

"""Forwarding an HTTP request to its upstream: the pipeline's handler, bodies streamed both ways.

A failure after the response has started aborts the connection rather than pretend a
truncated body is complete. Response bodies of known length up to 64 KiB are the
exception to streaming: read whole, they leave with the headers in one write. A client
that disconnects cancels the handler (server ``handler_cancellation``), which cancels
the upstream request.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from ztproxy import tracing
from ztproxy.context import RequestContext
from ztproxy.errors import PayloadTooLarge
from ztproxy.headers import downstream_response_headers
from ztproxy.metrics import REQUESTS
from ztproxy.state import INTAKE, RECORD
from ztproxy.upstream import UPSTREAM, UPSTREAM_ERRORS, forward_headers, upstream_failure, upstream_url
from ztproxy.upstream_client import UpstreamError, UpstreamResponse

_BODYLESS_STATUS = frozenset({204, 304})
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_WHOLE_BODY_LIMIT = 64 * 1024  # larger or unknown-length bodies are streamed
_LENGTH = frozenset({"content-length"})  # a body sent whole: aiohttp writes its length itself
_NOTHING_MORE: frozenset[str] = frozenset()
# RFC 9110 8.6: a request with a body-carrying method and no body says so with Content-Length: 0.
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class BodyLimit:
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
    record = request[RECORD]
    ctx = record.context
    headers = forward_headers(request, record)
    if "Host" not in headers:  # an HTTP/1.0 client with preserve_host; RFC 9112 3.2 wants one
        headers["Host"] = ctx.route.upstream_authority
    body, chunked = await _request_body(request, headers)
    upstream_response = await _send(request, ctx, headers, body, chunked)
    async with upstream_response:
        return await _answer(request, ctx, upstream_response)


async def _request_body(request: web.Request, headers: CIMultiDict[str]) -> tuple[BodyLimit | None, bool]:
    """The body to stream upstream (None: there is none), and whether it goes chunked."""
    if not request.body_exists:
        if request.method in _BODY_METHODS and "Content-Length" not in headers:
            headers["Content-Length"] = "0"
        return None, False
    if request.headers.get("Expect", "").lower() == "100-continue" and request.version >= (1, 1):
        # Sent only now, after authorization: a denied client never uploads its body.
        await request.writer.write(_CONTINUE)
    body = BodyLimit(request.content, request.app[INTAKE].max_request_body)
    if request.content_length is not None:
        return body, False
    headers.popall("Content-Length", None)  # the client's chunks end here; the upstream gets chunks of its own
    return body, True


async def _send(request: web.Request, ctx: RequestContext, headers: CIMultiDict[str], body: BodyLimit | None,
                chunked: bool) -> UpstreamResponse:
    """The upstream's answer (its head; the body follows), in a client span when tracing."""
    route = ctx.route
    upstream = request.app[UPSTREAM]
    target = upstream.targets[route.name]
    path = f"{ctx.target.path}?{ctx.target.query}" if ctx.target.query else ctx.target.path
    span = None if tracing.TRACER is None else tracing.start_client_span(request.method,
                                                                         upstream_url(route, ctx), headers)
    answered = 0
    sent = time.perf_counter()
    try:
        upstream_response = await upstream.pool.request(
            target.origin, request.method, path, headers.items(), body, chunked=chunked,
            connect_timeout=target.connect_timeout, read_timeout=target.read_timeout,
        )
        answered = upstream_response.status
    except UPSTREAM_ERRORS as exc:
        raise upstream_failure(exc) from exc
    finally:
        if span is not None:
            tracing.end_client_span(span, answered)
    REQUESTS.observe_upstream(route.name, time.perf_counter() - sent)
    return upstream_response


async def _answer(request: web.Request, ctx: RequestContext, upstream_response: UpstreamResponse
                  ) -> web.StreamResponse:
    """The upstream's answer as the client receives it: whole when small, else streamed."""
    has_body = request.method != "HEAD" and upstream_response.status not in _BODYLESS_STATUS
    length = upstream_response.content_length
    read_whole = has_body and length is not None and length <= _WHOLE_BODY_LIMIT
    headers = downstream_response_headers(upstream_response.raw_headers,
                                          also_removed=_LENGTH if read_whole else _NOTHING_MORE)
    headers["X-Request-Id"] = ctx.request_id
    if read_whole:
        # Small bodies of known length are read whole and leave in one write with the
        # headers; nothing has been sent yet, so a failure here is still a clean page.
        try:
            whole = await upstream_response.read()
        except UPSTREAM_ERRORS as exc:
            raise upstream_failure(exc) from exc
        return web.Response(status=upstream_response.status, reason=upstream_response.reason,
                            body=whole, headers=headers)
    response = web.StreamResponse(status=upstream_response.status, reason=upstream_response.reason,
                                  headers=headers)
    await response.prepare(request)
    if not has_body:  # HEAD keeps the upstream's Content-Length, without a body
        await response.write_eof()
        return response
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

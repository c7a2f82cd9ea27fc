"""Forwarding on a gRPC route: HTTP/2 to the upstream, both bodies streamed, trailers passed through.

The handler for routes with ``upstream_protocol: grpc``, after the same stages as every
request: the client's stream (HTTP/2 only: gRPC's status travels in trailers, which the
HTTP/1.1 side of the proxy cannot send) becomes a stream to the upstream with the cleaned
headers, the identity headers and the signed assertion (``upstream.forward_headers``).
Request and response bodies flow at the same time, so client-, server- and bidirectional
streaming calls work; the upstream's trailers (``grpc-status``, ``grpc-message``, its own
metadata) end the client's stream. An upstream that cannot be reached or fails before it
answers is a gRPC status (``pages.grpc``: 14 UNAVAILABLE, 4 DEADLINE_EXCEEDED), as is a
request body past ``max_request_body`` (8 RESOURCE_EXHAUSTED); a failure after the upstream
answered resets the client's stream (INTERNAL_ERROR), which gRPC clients report as an error
too, so a cut-off answer never looks complete.
"""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import web
from multidict import CIMultiDict

from ztproxy.errors import BadRequest, RequestError
from ztproxy.forward import BodyLimit
from ztproxy.headers import downstream_response_headers
from ztproxy.http2.client import Fields, UpstreamStream
from ztproxy.http2.stream import ResponseWriter
from ztproxy.state import INTAKE, RECORD
from ztproxy.upstream import UPSTREAM, forward_headers, upstream_failures
from ztproxy.upstream_client import UpstreamError

# RFC 9113 8.2.2: no connection-specific fields in HTTP/2; Host becomes :authority (8.3.1).
_NOT_FORWARDED = frozenset({"host", "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade",
                            "te"})


async def forward_grpc(request: web.Request) -> web.StreamResponse:
    """The handler of gRPC routes: the call upstream, its answer and trailers back, streamed."""
    writer = request.writer
    if not isinstance(writer, ResponseWriter):
        raise BadRequest("gRPC routes are served over HTTP/2 only.")
    record = request[RECORD]
    ctx = record.context
    upstream = request.app[UPSTREAM]
    target = upstream.targets[ctx.route.name]
    headers = forward_headers(request, record)
    path = f"{ctx.target.path}?{ctx.target.query}" if ctx.target.query else ctx.target.path
    head = request_head(request.method, target.origin.scheme, headers.get("Host", ctx.route.upstream_authority),
                        path, headers)
    with upstream_failures():
        stream = await upstream.http2.open(target.origin, head, end_stream=not request.body_exists,
                                           connect_timeout=target.connect_timeout)
    sender = None
    if request.body_exists:
        body = BodyLimit(request.content, request.app[INTAKE].max_request_body)
        sender = asyncio.get_running_loop().create_task(stream.send_body(body))
    try:
        with upstream_failures():
            await stream.head(target.read_timeout)
        return await _answer(request, writer, stream, target.read_timeout)
    finally:
        stream.release()
        if sender is not None and not sender.done():
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sender


def request_head(method: str, scheme: str, authority: str, path: str, headers: CIMultiDict[str]) -> Fields:
    """The upstream stream's HEADERS: pseudo-fields first (RFC 9113 8.3), names lowercased."""
    head = [(b":method", method.encode("ascii")), (b":scheme", scheme.encode("ascii")),
            (b":authority", authority.encode("utf-8", "surrogateescape")),
            (b":path", path.encode("utf-8", "surrogateescape"))]
    for name, value in headers.items():
        lowered = name.lower()
        if lowered not in _NOT_FORWARDED:
            head.append((lowered.encode("latin-1"), value.encode("utf-8", "surrogateescape")))
    head.append((b"te", b"trailers"))  # gRPC over HTTP/2: required of every request
    return head


async def _answer(request: web.Request, writer: ResponseWriter, stream: UpstreamStream,
                  read_timeout: float) -> web.StreamResponse:
    raw = [(name.decode("latin-1"), value.decode("utf-8", "surrogateescape")) for name, value in stream.headers]
    headers = downstream_response_headers(raw)
    headers["X-Request-Id"] = request[RECORD].request_id
    if stream.ended_with_head:  # Trailers-Only: one HEADERS frame, as the upstream sent it
        return web.Response(status=stream.status, headers=headers)
    response = web.StreamResponse(status=stream.status, headers=headers)
    await response.prepare(request)
    try:
        async for chunk in stream.chunks(read_timeout):
            await response.write(chunk)
    except (UpstreamError, RequestError):  # the upstream failed, or the client's body did (too large)
        # Headers are out: only a reset tells the client the answer is incomplete.
        if request.transport is not None:
            request.transport.abort()
        return response
    if stream.trailers:
        await writer.send_trailers(stream.trailers)
    await response.write_eof()
    return response

"""The proxy's refusals to gRPC callers: gRPC statuses in a Trailers-Only response, never a page.

A gRPC client reads its call's outcome from ``grpc-status`` and ``grpc-message`` only (gRPC
over HTTP/2, "Responses": Trailers-Only is HTTP 200 with ``content-type: application/grpc``
and the status in the one HEADERS frame, no body). Statuses follow gRPC's own mapping of HTTP
statuses (doc/http-grpc-status-mapping.md), made more precise where the proxy knows why:
a body or headers too large is RESOURCE_EXHAUSTED, an upstream that took too long
DEADLINE_EXCEEDED.
"""

from __future__ import annotations

from enum import IntEnum

from aiohttp import web

from ztproxy.errors import HeadersTooLarge, PayloadTooLarge, RequestError, UpstreamTimeout, UriTooLong

GRPC_CONTENT_TYPE = "application/grpc"


class GrpcStatus(IntEnum):
    """The status codes of gRPC (doc/statuscodes.md) that the proxy answers with."""

    DEADLINE_EXCEEDED = 4
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    UNAUTHENTICATED = 16


_BY_HTTP_STATUS = {
    401: GrpcStatus.UNAUTHENTICATED,
    403: GrpcStatus.PERMISSION_DENIED,
    404: GrpcStatus.UNIMPLEMENTED,
    429: GrpcStatus.UNAVAILABLE,
    502: GrpcStatus.UNAVAILABLE,
    503: GrpcStatus.UNAVAILABLE,
    504: GrpcStatus.UNAVAILABLE,
}


def is_grpc(content_type: str) -> bool:
    """``application/grpc`` and its ``+proto``/``+json`` forms (gRPC over HTTP/2, Content-Type)."""
    media = content_type.partition(";")[0].strip().lower()
    return media == GRPC_CONTENT_TYPE or media.startswith(GRPC_CONTENT_TYPE + "+")


def grpc_status(error: RequestError) -> GrpcStatus:
    if isinstance(error, (PayloadTooLarge, HeadersTooLarge, UriTooLong)):
        return GrpcStatus.RESOURCE_EXHAUSTED
    if isinstance(error, UpstreamTimeout):
        return GrpcStatus.DEADLINE_EXCEEDED
    return _BY_HTTP_STATUS.get(error.status, GrpcStatus.INTERNAL)


def grpc_message(text: str) -> str:
    """Percent-encoded as gRPC asks: printable ASCII but ``%`` as it is, every other byte ``%XX``."""
    return "".join(chr(byte) if 0x20 <= byte <= 0x7E and byte != 0x25 else f"%{byte:02X}"
                   for byte in text.encode("utf-8"))


def grpc_refusal(error: RequestError, *, request_id: str) -> web.Response:
    """``error`` as a gRPC caller understands it; its challenge headers (WWW-Authenticate) go along."""
    response = web.Response(status=200, headers={
        "Content-Type": GRPC_CONTENT_TYPE,
        "grpc-status": str(int(grpc_status(error))),
        "grpc-message": grpc_message(error.detail or error.title),
    })
    if request_id != "-":
        response.headers["X-Request-Id"] = request_id
    for name, value in error.headers:
        response.headers[name] = value
    return response

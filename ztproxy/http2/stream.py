"""One HTTP/2 request stream served as an aiohttp request: the same app, pipeline and pages.

``RequestStream`` turns a stream's header block into aiohttp's ``RawRequestMessage`` and
asks the served app's own request factory for the ``web.Request`` (so ``request.app``,
typed request keys, ``raw_path``, ``headers`` are what every stage already reads); the
request's body is an aiohttp ``StreamReader`` fed by DATA frames, its response goes
out through ``ResponseWriter``, an ``AbstractStreamWriter`` that writes HEADERS and DATA
frames instead of HTTP/1.1 bytes. Private aiohttp API it relies on (aiohttp 3.14):

- ``web.Server.request_factory`` / ``request_handler`` (the app's ``_make_request`` and
  ``_handle``) take a ``protocol`` typed ``RequestHandler``: the stream stands in for it
  with what ``BaseRequest`` reads (``ssl_context``, ``peername``, ``sockname``,
  ``transport``, ``max_field_size``, ``max_headers``);
- ``StreamReader`` calls ``pause_reading``/``resume_reading`` and reads ``connected`` and
  ``_reading_paused`` on that protocol: here they hold back or give back the stream's
  flow-control window (RFC 9113 5.2), so a body is buffered up to a bound, never more;
- ``StreamResponse.prepare`` writes through ``request._payload_writer`` (the writer given
  to the factory), and a raw ``HTTP/1.1 100 Continue`` written to ``request.writer``
  before the headers is how aiohttp answers ``Expect: 100-continue``: here it becomes an
  informational HEADERS frame (RFC 9113 8.1).

``request.transport`` is ``StreamTransport``: its TLS details are the connection's (client
certificates, posture), and ``abort()`` resets this stream, not the connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger, AbstractStreamWriter
from aiohttp.http import HttpVersion
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader
from h2.errors import ErrorCodes
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from ztproxy.errors import BadRequest, HeadersTooLarge, InternalError, RequestError
from ztproxy.http2.endpoint import Endpoint, StreamGone
from ztproxy.pages import error_response
from ztproxy.telemetry import get_logger

if TYPE_CHECKING:
    from aiohttp.web_protocol import RequestHandler

log = get_logger("ztproxy.http2")

HTTP2 = HttpVersion(2, 0)
_BODY_BUFFER = 2**16  # what aiohttp buffers of an HTTP/1.1 body before it stops reading
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
# RFC 9113 8.2.2: connection-specific fields never appear in HTTP/2; aiohttp adds some for 1.1.
_CONNECTION_FIELDS = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding",
                                b"upgrade"})

RequestFactory = Callable[..., web.BaseRequest]
RequestHandlerFn = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


class StreamTransport:
    """What ``request.transport`` is for a stream: the connection's details, the stream's abort."""

    def __init__(self, stream: RequestStream) -> None:
        self._stream = stream

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        transport = self._stream.endpoint.transport
        return default if transport is None else transport.get_extra_info(name, default)

    def is_closing(self) -> bool:
        return self._stream.closed

    def abort(self) -> None:
        """A response that can't be finished honestly: RST_STREAM, the connection's other streams go on."""
        self._stream.reset(ErrorCodes.INTERNAL_ERROR)

    def close(self) -> None:
        self._stream.reset(ErrorCodes.NO_ERROR)


class ResponseWriter(AbstractStreamWriter):
    """Writes an aiohttp response onto one stream: HEADERS, DATA as windows allow, trailers."""

    def __init__(self, stream: RequestStream) -> None:
        self._stream = stream
        self.headers_sent = False
        self.ended = False
        self.length: int | None = None
        self._head: list[tuple[bytes, bytes]] | None = None  # written, not yet sent (see send_headers)

    async def write_headers(self, status_line: str, headers: CIMultiDict[str]) -> None:
        status = status_line.split(" ", 2)[1]
        block = [(b":status", status.encode("ascii"))]
        for name, value in headers.items():
            lowered = name.lower().encode("latin-1")
            if lowered not in _CONNECTION_FIELDS:
                block.append((lowered, value.encode("utf-8", "surrogateescape")))
        self._head = block
        self.headers_sent = True

    def send_headers(self) -> None:
        """aiohttp's streamed responses send their head at once; a whole ``web.Response`` with its body."""
        head, self._head = self._head, None
        if head is not None:
            self._stream.endpoint.send_headers(self._stream.stream_id, head)

    async def write(self, chunk: bytes | bytearray | memoryview) -> None:
        if not self.headers_sent:
            if bytes(chunk) == _CONTINUE:  # aiohttp's way to say 100 Continue (see the docstring)
                self._stream.endpoint.send_headers(self._stream.stream_id, [(b":status", b"100")])
                return
            raise RuntimeError("a body before the response headers")
        self.send_headers()
        if chunk:
            self.output_size += len(chunk)
            await self._stream.endpoint.send_data(self._stream.stream_id, chunk)

    async def write_eof(self, chunk: bytes = b"") -> None:
        if self.ended:
            return
        self.ended = True
        if self._head is not None and not chunk:
            # No body: one HEADERS frame ends the stream (what gRPC calls Trailers-Only).
            head, self._head = self._head, None
            self._stream.endpoint.send_headers(self._stream.stream_id, head, end_stream=True)
            return
        self.send_headers()
        self.output_size += len(chunk)
        await self._stream.endpoint.send_data(self._stream.stream_id, chunk, end_stream=True)

    async def send_trailers(self, trailers: list[tuple[bytes, bytes]]) -> None:
        """End the stream with a trailer section (RFC 9113 8.1): what gRPC's status travels in."""
        if self.ended:
            return
        self.ended = True
        self.send_headers()
        self._stream.endpoint.send_headers(self._stream.stream_id, trailers, end_stream=True)

    async def drain(self) -> None:
        await self._stream.endpoint.drain()

    def enable_chunking(self) -> None:
        """HTTP/2 frames every body: there are no chunks to add."""

    def enable_compression(self, encoding: str = "deflate", strategy: int | None = None) -> None:
        raise RuntimeError("the proxy never compresses what it relays")


class RequestStream:
    """A client's stream: its request through the app, its body in, its response out."""

    def __init__(self, endpoint: Endpoint, stream_id: int, *, has_body: bool, ssl_context: Any, peername: Any,
                 sockname: Any, max_field_size: int, max_headers: int) -> None:
        self.endpoint = endpoint
        self.stream_id = stream_id
        self.closed = False
        self.task: asyncio.Task[None] | None = None
        self.answered = False  # the whole response went out
        self.request_ended = not has_body  # the client's END_STREAM arrived
        # What BaseRequest reads from the protocol it is given (see the module docstring).
        self.ssl_context = ssl_context
        self.peername = peername
        self.sockname = sockname
        self.max_field_size = max_field_size
        self.max_headers = max_headers
        self.transport = StreamTransport(self)
        self.writer = ResponseWriter(self)
        self._reading_paused = False
        self._unacknowledged = 0
        # Made now: DATA frames may arrive with the HEADERS, before the stream's task runs.
        self.body = StreamReader(cast("Any", self), _BODY_BUFFER, loop=asyncio.get_running_loop()) if has_body \
            else None

    # -- the request body, with its flow-control window (StreamReader's protocol hooks)

    @property
    def connected(self) -> bool:
        return not self.closed

    def pause_reading(self) -> None:
        self._reading_paused = True  # DATA is still taken; its window is given back only when read

    def resume_reading(self, resume_parser: bool = True) -> None:
        self._reading_paused = False
        self._acknowledge()

    def feed(self, data: bytes, flow_controlled_length: int) -> None:
        self._unacknowledged += flow_controlled_length
        if self.body is not None and not self.closed and not self.body.is_eof():
            self.body.feed_data(data)
        if not self._reading_paused or self.body is None or self.closed:
            self._acknowledge()

    def feed_eof(self) -> None:
        self.request_ended = True
        if self.body is not None:
            self.body.feed_eof()

    def _acknowledge(self) -> None:
        size, self._unacknowledged = self._unacknowledged, 0
        if size:
            self.endpoint.conn.acknowledge_received_data(size, self.stream_id)
            self.endpoint.flush()

    # -- the stream's end

    def reset(self, error_code: int) -> None:
        self.endpoint.reset(self.stream_id, error_code)
        self.ended_by_peer()

    def ended_by_peer(self) -> None:
        """RST_STREAM or a lost connection: its handler is cancelled (aiohttp's ``handler_cancellation``)."""
        if self.closed:
            return
        self.closed = True
        if self.body is not None:
            self.body.set_exception(StreamGone("the client reset the stream"))
        if self.task is not None and not self.task.done() and not self.answered:
            self.task.cancel()
        self._acknowledge()

    # -- the request

    def message(self, headers: list[tuple[bytes, bytes]]) -> RawRequestMessage:
        """The stream's header block as aiohttp's parser would have given the request; raises RequestError."""
        pseudo: dict[bytes, bytes] = {}
        fields: list[tuple[str, str]] = []
        cookies: list[str] = []
        for name, value in headers:
            if name.startswith(b":"):
                pseudo[name] = value
            elif name == b"cookie":
                cookies.append(_text(value))
            else:
                fields.append((_text(name), _text(value)))
        if len(fields) + len(cookies) > self.max_headers:
            raise HeadersTooLarge(f"More than {self.max_headers} request headers.")
        method = _text(pseudo.get(b":method", b""))
        path = _text(pseudo.get(b":path", b""))
        if method == "CONNECT" or not path:
            raise BadRequest("The request has no path (HTTP/2 CONNECT is not served).")
        if cookies:  # RFC 9113 8.2.3: split cookie fields are joined again for an HTTP/1.1 app
            fields.append(("cookie", "; ".join(cookies)))
        authority = pseudo.get(b":authority")
        if authority is not None:
            # RFC 9113 8.3.1: :authority is the Host. A Host field naming another is kept beside it,
            # so intake refuses the request (two Hosts) rather than pick one.
            host = _text(authority)
            fields = [("host", host), *((n, v) for n, v in fields if n != "host" or v != host)]
        url = _target_url(path)
        proxy = CIMultiDictProxy(CIMultiDict(fields))
        raw = tuple((name.encode("latin-1", "surrogateescape"), value.encode("utf-8", "surrogateescape"))
                    for name, value in fields)
        return RawRequestMessage(method, path, HTTP2, proxy, raw, False, None, False, False, url)

    async def serve(self, headers: list[tuple[bytes, bytes]], factory: RequestFactory, handler: RequestHandlerFn,
                    access_logger: AbstractAccessLogger | None) -> None:
        """Run the request through the served app and write its response: the stream's task."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        payload = self.body if self.body is not None else EMPTY_PAYLOAD
        refusal: RequestError | None = None
        try:
            message = self.message(headers)
        except RequestError as error:  # as aiohttp's parser refuses a request: a page, no pipeline
            message, refusal = _refused_message(headers), error
        task = asyncio.current_task()
        assert task is not None
        request = factory(message, payload, cast("RequestHandler", self), self.writer, task)
        try:
            response: web.StreamResponse
            if refusal is not None:
                response = error_response(refusal, request_id="-")
            else:
                response = await _answer(request, handler)
            await response.prepare(request)
            await response.write_eof()
            self.answered = True
        except StreamGone:
            return  # the client reset the stream or left: the pipeline logged what it knew
        if access_logger is not None:
            access_logger.log(request, response, loop.time() - started)


async def _answer(request: web.BaseRequest, handler: RequestHandlerFn) -> web.StreamResponse:
    """The app's response; what aiohttp's own connection handler does with what escapes it."""
    try:
        return await handler(request)
    except web.HTTPException as exc:  # aiohttp's router; the catch-all route leaves none
        return exc
    except Exception:
        log.exception("http2_handler_failed", path=request.raw_path[:256])
        return error_response(InternalError(), request_id="-")


def _text(value: bytes) -> str:
    return value.decode("utf-8", "surrogateescape")


def _target_url(path: str) -> URL:
    """The request's URL as aiohttp's parser builds it (origin-form, or ``*``); intake judges the path."""
    if path == "*":
        return URL(path, encoded=True)
    path_part, _, fragment = path.partition("#")
    path_part, _, query = path_part.partition("?")
    try:
        return URL.build(path=path_part, query_string=query, fragment=fragment, encoded=True)
    except ValueError as exc:
        raise BadRequest("The request target is not valid.") from exc


def _refused_message(headers: list[tuple[bytes, bytes]]) -> RawRequestMessage:
    """A stand-in request for an access event and an error page: the stream's own could not be made."""
    method = next((_text(value) for name, value in headers if name == b":method"), "GET")
    return RawRequestMessage(method, "/", HTTP2, CIMultiDictProxy(CIMultiDict()), (), True, None, False, False,
                             URL("/"))

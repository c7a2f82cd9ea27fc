"""HTTP/2 to upstreams (gRPC routes): multiplexed connections per origin, streams both ways, trailers.

One pool per process. Each origin gets connections opened on demand (h2c with prior
knowledge for ``http://``, RFC 9113 3.3; TLS with ALPN ``h2`` for ``https://``, which must
be what the upstream picks) and each connection carries as many streams at once as the
upstream's SETTINGS_MAX_CONCURRENT_STREAMS allows; a full or closing one is left for a new
one. An ``UpstreamStream`` is one request: its body goes out as the windows allow
(``endpoint.py``), its answer comes back as a head, DATA chunks (the window given back as
each is taken) and trailers.

Failures are the HTTP/1.1 client's errors (``ztproxy.upstream_client``), so
``upstream.upstream_failures`` maps them as it does the others: no connection or a reset
stream is ``UpstreamConnectError``/``UpstreamProtocolError`` (502), silence for
``read_timeout`` is ``UpstreamTimeoutError`` (504).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    Event,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
)
from h2.exceptions import ProtocolError
from h2.settings import SettingCodes, Settings

from ztproxy.http2.endpoint import Endpoint, StreamGone
from ztproxy.upstream_client import (
    Origin,
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeoutError,
)

Fields = list[tuple[bytes, bytes]]

MAX_RESPONSE_HEADERS = 64 * 1024  # SETTINGS_MAX_HEADER_LIST_SIZE asked of upstreams
_WINDOW = 256 * 1024


class UpstreamStream:
    """One request to an upstream over HTTP/2: the head, body chunks and trailers of its answer."""

    def __init__(self, connection: ClientConnection, stream_id: int) -> None:
        self._connection = connection
        self.stream_id = stream_id
        self.status = 0
        self.headers: Fields = []
        self.trailers: Fields = []
        self.ended = False  # the upstream's END_STREAM arrived
        self.ended_with_head = False  # ... in the head itself (gRPC's Trailers-Only)
        self._head = asyncio.get_running_loop().create_future()
        self._chunks: deque[tuple[bytes, int]] = deque()
        self._error: Exception | None = None
        self._waiter: asyncio.Future[None] | None = None

    # -- what the connection hears

    def on_head(self, headers: Fields, ended: bool) -> None:
        self.headers = [(name, value) for name, value in headers if not name.startswith(b":")]
        self.status = int(dict(headers).get(b":status", b"0"))
        self.ended_with_head = ended
        if not self._head.done():
            self._head.set_result(None)

    def on_data(self, data: bytes, flow_controlled_length: int) -> None:
        self._chunks.append((data, flow_controlled_length))
        self._wake()

    def on_trailers(self, trailers: Fields) -> None:
        self.trailers = trailers

    def on_end(self) -> None:
        self.ended = True
        self._wake()

    def on_error(self, error: Exception) -> None:
        """The exchange failed: the upstream's fault (an ``UpstreamError``), or the client's body's."""
        if self.ended:
            return
        self._error = error
        if not self._head.done():
            self._head.set_exception(error)
            self._head.exception()  # retrieved: nobody may be waiting any more
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # -- what the handler does

    async def head(self, read_timeout: float | None) -> None:
        try:
            async with asyncio.timeout(read_timeout):
                await asyncio.shield(self._head)
        except TimeoutError as exc:
            raise UpstreamTimeoutError("no answer from the upstream in time") from exc

    async def chunks(self, read_timeout: float | None) -> AsyncIterator[bytes]:
        """The answer's body as it comes; its window is given back as each chunk is taken."""
        while True:
            while self._chunks:
                data, flow_controlled_length = self._chunks.popleft()
                self._connection.acknowledge(self.stream_id, flow_controlled_length)
                yield data
            if self._error is not None:
                raise self._error
            if self.ended:
                return
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(read_timeout):
                    await self._waiter
            except TimeoutError as exc:
                raise UpstreamTimeoutError("the upstream went quiet") from exc
            finally:
                self._waiter = None

    async def send_body(self, body: AsyncIterable[bytes]) -> None:
        """Stream the request body upstream, then end the stream.

        A body that fails (over ``max_request_body``, the client gone) resets the stream, and
        the handler waiting for the answer gets its error instead.
        """
        try:
            async for chunk in body:
                await self._connection.send_data(self.stream_id, chunk)
            await self._connection.send_data(self.stream_id, b"", end_stream=True)
        except StreamGone:
            return  # the upstream answered and closed, or reset: the answer says what happened
        except Exception as exc:
            self.release()
            self.on_error(exc)

    def release(self) -> None:
        """The exchange is over for the handler; one the upstream has not ended is reset (CANCEL)."""
        if not self.ended and self._error is None:
            self._connection.reset(self.stream_id, ErrorCodes.CANCEL)
        self._connection.finished(self.stream_id)


class ClientConnection(Endpoint):
    """One HTTP/2 connection to an upstream, its streams and whether it takes more."""

    def __init__(self, origin: Origin) -> None:
        super().__init__(H2Connection(H2Configuration(client_side=True, header_encoding=None)))
        self.origin = origin
        self.streams: dict[int, UpstreamStream] = {}
        self.closing = False

    @property
    def available(self) -> bool:
        return (self.transport is not None and not self.closing
                and len(self.streams) < self.conn.remote_settings.max_concurrent_streams)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.conn.local_settings = Settings(client=True, initial_values={
            SettingCodes.ENABLE_PUSH: 0,
            SettingCodes.INITIAL_WINDOW_SIZE: _WINDOW,
            SettingCodes.MAX_HEADER_LIST_SIZE: MAX_RESPONSE_HEADERS,
        })
        self.conn.decoder.max_header_list_size = MAX_RESPONSE_HEADERS  # h2 sets it only on an acknowledgement
        self.conn.initiate_connection()
        self.flush()

    def open(self, headers: Fields, *, end_stream: bool) -> UpstreamStream:
        stream_id = self.conn.get_next_available_stream_id()
        stream = self.streams[stream_id] = UpstreamStream(self, stream_id)
        try:
            self.send_headers(stream_id, headers, end_stream=end_stream)
        except StreamGone as exc:
            self.streams.pop(stream_id, None)
            raise UpstreamProtocolError("the upstream connection closed") from exc
        return stream

    def acknowledge(self, stream_id: int, size: int) -> None:
        if self.transport is not None:
            with contextlib.suppress(ProtocolError):
                self.conn.acknowledge_received_data(size, stream_id)
            self.flush()

    def finished(self, stream_id: int) -> None:
        self.streams.pop(stream_id, None)
        self.forget(stream_id)

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except ProtocolError as exc:
            self.flush()
            self._fail(UpstreamProtocolError(f"the upstream broke HTTP/2: {exc}"))
            return
        for event in events:
            self._on_event(event)
        self.flush()

    def _on_event(self, event: Event) -> None:
        self.note_windows(event)
        stream = self.streams.get(getattr(event, "stream_id", 0))
        if isinstance(event, ConnectionTerminated):
            self.closing = True  # GOAWAY: streams above its last id were never processed
            last = event.last_stream_id or 0
            for stream_id, unprocessed in list(self.streams.items()):
                if stream_id > last:
                    unprocessed.on_error(UpstreamConnectError("the upstream is going away"))
        elif stream is None:
            if isinstance(event, DataReceived):  # a stream given up on: its bytes still count
                self.acknowledge(event.stream_id, event.flow_controlled_length)
        elif isinstance(event, ResponseReceived):
            stream.on_head(event.headers, event.stream_ended is not None)
        elif isinstance(event, DataReceived):
            stream.on_data(event.data, event.flow_controlled_length)
        elif isinstance(event, TrailersReceived):
            stream.on_trailers(event.headers)
        elif isinstance(event, StreamEnded):
            stream.on_end()
        elif isinstance(event, StreamReset):
            stream.on_error(UpstreamProtocolError(f"the upstream reset the stream ({event.error_code!r})"))

    def connection_lost(self, exc: BaseException | None) -> None:
        super().connection_lost(exc)
        self._fail(UpstreamProtocolError("the upstream closed the connection"))

    def _fail(self, error: UpstreamError) -> None:
        self.closing = True
        for stream in list(self.streams.values()):
            stream.on_error(error)
        if self.transport is not None:
            self.transport.close()

    def close(self) -> None:
        self.closing = True
        if self.transport is not None:
            with contextlib.suppress(ProtocolError):
                self.conn.close_connection()
            self.flush()
            self.transport.close()


class Http2Pool:
    """The process's HTTP/2 connections to upstreams, by origin."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self._ssl = ssl_context
        self._connections: dict[Origin, list[ClientConnection]] = {}
        self._connecting: dict[Origin, asyncio.Lock] = {}

    async def open(self, origin: Origin, headers: Fields, *, end_stream: bool,
                   connect_timeout: float | None) -> UpstreamStream:
        """A new stream to ``origin`` with its request head sent (the body, if any, follows)."""
        lock = self._connecting.setdefault(origin, asyncio.Lock())
        async with lock:  # one new connection at a time per origin: the others will share it
            connection = self._available(origin) or await self._connect(origin, connect_timeout)
        return connection.open(headers, end_stream=end_stream)

    def _available(self, origin: Origin) -> ClientConnection | None:
        connections = self._connections.get(origin, [])
        connections[:] = [connection for connection in connections if connection.transport is not None]
        return next((connection for connection in connections if connection.available), None)

    async def _connect(self, origin: Origin, connect_timeout: float | None) -> ClientConnection:
        connection = ClientConnection(origin)
        context = None
        if origin.tls:
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
                self._ssl.set_alpn_protocols(["h2"])
            context = self._ssl
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(connect_timeout):
                transport, _ = await loop.create_connection(
                    lambda: connection, origin.host, origin.port, ssl=context,
                    server_hostname=origin.host if context is not None else None)
        except TimeoutError as exc:
            raise UpstreamTimeoutError(f"connecting to {origin.host}:{origin.port} took too long") from exc
        except (OSError, ssl.SSLError) as exc:
            raise UpstreamConnectError(f"cannot connect to {origin.host}:{origin.port}: {exc}") from exc
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None and ssl_object.selected_alpn_protocol() != "h2":
            transport.close()
            raise UpstreamConnectError(f"{origin.host}:{origin.port} does not speak HTTP/2 over TLS (ALPN)")
        self._connections.setdefault(origin, []).append(connection)
        return connection

    async def close(self) -> None:
        for connections in self._connections.values():
            for connection in connections:
                connection.close()
        self._connections.clear()

"""A client's HTTP/2 connection to the proxy: streams in, each served by the app as a request.

The listener hands a connection here when TLS negotiated ``h2`` by ALPN (RFC 9113 3.2), or
when a plain listener with ``server.http2.cleartext`` sees the connection preface (3.3,
prior knowledge). ``h2`` parses every frame and HPACK block; each request stream becomes
an aiohttp request run by the same app and pipeline as HTTP/1.1 (``stream.py``).

Limits, and the HTTP/2 attacks they answer:

- SETTINGS_MAX_CONCURRENT_STREAMS (``max_concurrent_streams``): ``h2`` refuses streams over
  it; so does this module for streams whose handlers still run after their client reset
  them, which ``h2`` no longer counts (REFUSED_STREAM, RFC 9113 8.7).
- Rapid reset (CVE-2023-44487): a client whose streams end unanswered (reset by it, or
  refused) more often than answered, beyond ``RESET_ALLOWANCE``, is sent GOAWAY
  ENHANCE_YOUR_CALM and disconnected.
- CONTINUATION flood (VU#421644): ``h2`` refuses a header block of more than 64 frames;
  SETTINGS_MAX_HEADER_LIST_SIZE is ``limits.max_header_bytes`` and HPACK decoding stops
  there (an HPACK bomb is a COMPRESSION/ENHANCE_YOUR_CALM connection error, never memory);
  intake then applies the same 431 budget as to HTTP/1.1.
- Slow clients: the first request's headers must arrive within ``limits.header_timeout``
  and a connection without streams closes after ``limits.keepalive_timeout``, as for
  HTTP/1.1; reading stops while the socket's write buffer is full (``endpoint.py``).

Drain: ``close`` (the runner closing the listener) refuses new streams and lets those in
flight finish, then sends GOAWAY; ``shutdown`` (after ``shutdown_grace``) cancels those left. Both are what
aiohttp's ``web.Server`` calls on each of its connections, which this one joins with
``connection_made``/``connection_lost`` (and the ``_task_handler`` it reads).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    Event,
    RequestReceived,
    StreamEnded,
    StreamReset,
)
from h2.exceptions import ProtocolError
from h2.settings import SettingCodes, Settings

from ztproxy.http2.endpoint import Endpoint
from ztproxy.http2.stream import RequestFactory, RequestHandlerFn, RequestStream
from ztproxy.telemetry import get_logger

log = get_logger("ztproxy.http2")

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"  # RFC 9113 3.4
RESET_ALLOWANCE = 100  # streams a client may reset (or have refused) beyond those answered
INITIAL_WINDOW = 256 * 1024  # each stream's receive window: what a body may have in flight


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """What a connection is served with: from ``server.http2`` and ``server.limits``."""

    max_concurrent_streams: int
    max_header_bytes: int
    max_header_count: int
    header_timeout: float
    keepalive_timeout: float


class ServerConnection(Endpoint):
    """One client connection: its streams, limits, timers and drain."""

    def __init__(self, manager: web.Server, settings: ServerSettings,
                 access_logger: AbstractAccessLogger | None) -> None:
        super().__init__(H2Connection(H2Configuration(client_side=False, header_encoding=None)))
        self._manager = manager
        self._settings = settings
        self._access_logger = access_logger
        self._factory: RequestFactory = manager.request_factory
        self._handler: RequestHandlerFn = manager.request_handler
        self._streams: dict[int, RequestStream] = {}  # their handlers are running
        self._task_handler = None  # what web.Server.connection_lost looks at; streams have their own
        self._unanswered = 0  # streams the client reset before their answer was out, or refused
        self._answered = 0
        self._closing = False
        self._timer: asyncio.TimerHandle | None = None
        self._idle: asyncio.Event = asyncio.Event()
        self._idle.set()

    # -- the connection

    def connection_made(self, transport: asyncio.BaseTransport, preface: bytes = b"") -> None:
        super().connection_made(transport)
        assert self.transport is not None
        self._manager.connection_made(self, self.transport)  # type: ignore[arg-type]  # drained with the others
        settings = self._settings
        # In force at once (the client learns them from this SETTINGS frame): a limit isn't
        # lifted until a client agrees to it; the window only starts larger than the client thinks.
        self.conn.local_settings = Settings(client=False, initial_values={
            SettingCodes.MAX_CONCURRENT_STREAMS: settings.max_concurrent_streams,
            SettingCodes.MAX_HEADER_LIST_SIZE: settings.max_header_bytes,
            SettingCodes.INITIAL_WINDOW_SIZE: INITIAL_WINDOW,
        })
        # h2 gives its HPACK decoder a new list size when one is acknowledged, not when it starts so.
        self.conn.decoder.max_header_list_size = settings.max_header_bytes
        self.conn.initiate_connection()
        self.flush()
        self._arm(settings.header_timeout, "request_header_timeout")
        if preface:
            self.data_received(preface)

    def data_received(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return  # refused already: what it still sends is not read
        try:
            events = self.conn.receive_data(data)
        except ProtocolError as exc:
            # h2 has queued GOAWAY with the error (a malformed frame, a CONTINUATION flood, an HPACK bomb).
            self._refuse_connection("http2_protocol_error", str(exc))
            return
        for event in events:
            self._on_event(event)
            if self.transport is None or self.transport.is_closing():
                return
        self.flush()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_timer()
        for stream in list(self._streams.values()):
            stream.ended_by_peer()
        super().connection_lost(exc)
        self._manager.connection_lost(self, exc)  # type: ignore[arg-type]

    # -- events

    def _on_event(self, event: Event) -> None:
        self.note_windows(event)
        if isinstance(event, RequestReceived):
            self._open(event.stream_id, list(event.headers), has_body=event.stream_ended is None)
        elif isinstance(event, DataReceived):
            stream = self._streams.get(event.stream_id)
            if stream is None:  # a stream refused or finished: its bytes still count against the window
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            else:
                stream.feed(event.data, event.flow_controlled_length)
        elif isinstance(event, StreamEnded):
            if (stream := self._streams.get(event.stream_id)) is not None:
                stream.feed_eof()
        elif isinstance(event, StreamReset):
            self._on_reset(event.stream_id)
        elif isinstance(event, ConnectionTerminated):
            self.close()  # the client's GOAWAY: finish what is in flight, take nothing new

    def _open(self, stream_id: int, headers: list[tuple[bytes, bytes]], *, has_body: bool) -> None:
        if self._closing or len(self._streams) >= self._settings.max_concurrent_streams:
            # RFC 9113 8.7: not processed, safe to retry. Handlers of reset streams still count here.
            self.reset(stream_id, ErrorCodes.REFUSED_STREAM)
            self.forget(stream_id)
            self._count_unanswered()
            return
        self._cancel_timer()
        self._idle.clear()
        transport = self.transport
        assert transport is not None
        stream = RequestStream(self, stream_id, has_body=has_body, ssl_context=transport.get_extra_info("sslcontext"),
                               peername=transport.get_extra_info("peername"),
                               sockname=transport.get_extra_info("sockname"),
                               max_field_size=self._settings.max_header_bytes,
                               max_headers=self._settings.max_header_count)
        self._streams[stream_id] = stream
        stream.task = asyncio.get_running_loop().create_task(
            stream.serve(headers, self._factory, self._handler, self._access_logger))
        stream.task.add_done_callback(lambda _: self._finished(stream))

    def _on_reset(self, stream_id: int) -> None:
        stream = self._streams.get(stream_id)
        if stream is None:
            self.forget(stream_id)  # nothing of it runs any more
            return
        if stream.answered:
            return
        stream.ended_by_peer()
        self._count_unanswered()

    def _count_unanswered(self) -> None:
        """A stream reset by the client, or refused: past the allowance, the connection ends."""
        self._unanswered += 1
        if self._unanswered > RESET_ALLOWANCE + self._answered and not self._closing:
            # CVE-2023-44487 (rapid reset): streams opened and cancelled at once cost the proxy a
            # request each and the client nothing; refused ones still cost their HPACK decoding.
            self._closing = True
            with contextlib.suppress(ProtocolError):
                self.conn.close_connection(ErrorCodes.ENHANCE_YOUR_CALM, b"too many streams reset or refused")
            self._refuse_connection("http2_rapid_reset", f"{self._unanswered} streams reset or refused")

    def _finished(self, stream: RequestStream) -> None:
        self._streams.pop(stream.stream_id, None)
        if stream.answered and not stream.request_ended and not stream.closed:
            # RFC 9113 8.1: answered before the body ended (a 413, an early gRPC answer): the
            # client may stop sending it.
            self.reset(stream.stream_id, ErrorCodes.NO_ERROR)
        self.forget(stream.stream_id)
        if stream.answered:
            self._answered += 1
        if not self._streams:
            self._idle.set()
            if self._closing:
                self._goodbye()
            elif self.transport is not None:
                self._arm(self._settings.keepalive_timeout, "")

    def _refuse_connection(self, event: str, reason: str) -> None:
        peer = self.transport.get_extra_info("peername") if self.transport is not None else None
        log.info(event, client=peer[0] if isinstance(peer, tuple) else peer, reason=reason[:200])
        self.flush()
        for stream in list(self._streams.values()):
            stream.ended_by_peer()
        self._close_transport()

    # -- timers

    def _arm(self, delay: float, event: str) -> None:
        self._cancel_timer()
        self._timer = asyncio.get_running_loop().call_later(delay, self._expired, event)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self, event: str) -> None:
        self._timer = None
        if self._streams or self.transport is None:
            return
        if event:
            peer = self.transport.get_extra_info("peername")
            log.info(event, client=peer[0] if isinstance(peer, tuple) else peer)
        self._goodbye()

    # -- drain (aiohttp's web.Server calls these on every connection)

    def close(self) -> None:
        """Take no new streams (REFUSED_STREAM: clients retry them); GOAWAY once those in flight are answered.

        ``h2`` closes its side of the connection when it sends GOAWAY (it could send no more
        responses after it), so the GOAWAY comes last rather than first (RFC 9113 6.8 allows both).
        """
        if self._closing:
            return
        self._closing = True
        if not self._streams:
            self._goodbye()

    def _goodbye(self) -> None:
        if self.transport is not None:
            with contextlib.suppress(ProtocolError):
                self.conn.close_connection(ErrorCodes.NO_ERROR)
            self.flush()
        self._close_transport()

    async def shutdown(self, timeout: float | None = None) -> None:  # noqa: ASYNC109 -- web.Server calls it so
        """Wait up to ``timeout`` for the streams in flight, then end those left and the connection."""
        self.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        for stream in list(self._streams.values()):
            stream.reset(ErrorCodes.CANCEL)
        self._close_transport()

    def _close_transport(self) -> None:
        self._cancel_timer()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

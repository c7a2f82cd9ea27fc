"""One upstream connection: an asyncio protocol feeding llhttp, one exchange at a time.

The errors of an exchange and the ``Origin`` a connection goes to live here too; the
pool (``pool.py``) hands connections out, takes them back and keeps the healthy ones. A
connection knows nothing of the pool: it reports its end through the ``on_lost`` callback.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterable, Callable
from dataclasses import dataclass

import httptools

# Buffered body bytes at which the upstream connection stops being read (backpressure).
_HIGH_WATER = 256 * 1024
_LOW_WATER = 64 * 1024


class UpstreamError(Exception):
    """The exchange with the upstream failed; the connection is gone."""


class UpstreamConnectError(UpstreamError):
    """No connection: refused, unreachable, unresolvable, or the TLS handshake failed."""


class UpstreamTimeoutError(UpstreamError):
    """Connecting took longer than ``connect_timeout`` or the upstream went quiet for ``read_timeout``."""


class UpstreamProtocolError(UpstreamError):
    """The upstream broke HTTP/1.1: malformed or oversized head, bad framing, or it hung up mid-answer."""


class StaleConnection(UpstreamProtocolError):
    """A reused connection closed before a single byte of the answer came: safe to retry."""


@dataclass(frozen=True, slots=True)
class Origin:
    """Where connections go: ``host`` unbracketed (IPv6) and the port always explicit."""

    scheme: str
    host: str
    port: int

    @property
    def tls(self) -> bool:
        return self.scheme == "https"


class Connection(asyncio.Protocol):
    """One keep-alive connection to an origin, serving one exchange at a time."""

    def __init__(self, origin: Origin, max_header_bytes: int, on_lost: Callable[[Connection], None]) -> None:
        self.on_lost = on_lost  # told once the transport is gone (the pool forgets the connection)
        self.origin = origin
        self.loop = asyncio.get_running_loop()
        self.max_header_bytes = max_header_bytes
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self.reused = False
        self._writable = True
        self._drained: asyncio.Future[None] | None = None
        # One timer outlives exchanges: it re-arms itself while someone waits, and lapses otherwise.
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = 0.0
        self.parser = httptools.HttpResponseParser(self)
        self.head_request = False
        self.body: deque[bytes] = deque()
        self._reset_exchange()

    def _reset_exchange(self) -> None:
        if self.head_request:
            # llhttp still expects the body that Content-Length announced: a fresh parser.
            self.parser = httptools.HttpResponseParser(self)
        self.in_exchange = False
        self.head_request = False
        self.waiter: asyncio.Future[None] | None = None
        self.error: BaseException | None = None
        self.received = False
        self.head_done = False
        self.complete = False
        self.tainted = False  # bytes beyond the answer: never reuse
        self.until_eof = False
        self.status = 0
        self.reason = ""
        self.header_list: list[tuple[str, str]] = []
        self.head_bytes = 0  # raw bytes received before the final head ended, interim answers included
        self.field_bytes = 0  # the fields parsed so far, for a whole oversized head in one read
        self.keep_alive = False
        self.buffered = 0
        self.paused = False
        self.read_timeout: float | None = None
        self.active_at = 0.0
        self.body_task: asyncio.Task[None] | None = None

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not self.in_exchange or self.complete:
            # Bytes on an idle connection, or after the answer ended: it cannot be trusted.
            self.tainted = True
            if self.transport is not None:
                self.transport.abort()
            return
        self.received = True
        self.active_at = self.loop.time()
        try:
            self.parser.feed_data(data)
            if not self.head_done:
                # llhttp buffers an unfinished header line without limit: count the raw bytes.
                self.head_bytes += len(data)
                if self.head_bytes > self.max_header_bytes:
                    raise UpstreamProtocolError(
                        f"the upstream's response head is larger than {self.max_header_bytes} bytes")
        except UpstreamError as exc:
            self._fail(exc)
        except httptools.HttpParserUpgrade:
            self._fail(UpstreamProtocolError("the upstream switched protocols on a plain request"))
        except httptools.HttpParserError as exc:
            cause = exc.__context__  # an error raised by one of the callbacks below
            self._fail(cause if isinstance(cause, UpstreamError)
                       else UpstreamProtocolError(f"malformed response from the upstream: {exc}"))

    def eof_received(self) -> bool | None:
        if self.until_eof and not self.complete:
            self.on_message_complete()
        return None  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.until_eof and not self.complete and exc is None:
            self.on_message_complete()
        if self.in_exchange and not self.complete:
            if not self.received and self.reused:
                self._fail(StaleConnection("the upstream closed a kept-alive connection"))
            else:
                self._fail(UpstreamProtocolError("the upstream closed the connection before the answer ended"))
        if self._drained is not None and not self._drained.done():
            self._drained.set_exception(UpstreamProtocolError("the upstream closed the connection"))
        self._cancel_timer()
        self.on_lost(self)

    def pause_writing(self) -> None:
        self._writable = False

    def resume_writing(self) -> None:
        self._writable = True
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        self._drained = None

    # -- llhttp callbacks (httptools)

    def on_message_begin(self) -> None:
        if self.head_done:
            raise UpstreamProtocolError("the upstream sent a second answer to one request")

    def on_status(self, reason: bytes) -> None:
        self.reason += reason.decode("latin-1")  # called once per piece when the line is split across reads

    def on_header(self, name: bytes, value: bytes) -> None:
        self.field_bytes += len(name) + len(value) + 4
        if self.field_bytes > self.max_header_bytes:
            raise UpstreamProtocolError(f"the upstream's response head is larger than {self.max_header_bytes} bytes")
        self.header_list.append((name.decode("latin-1"), value.decode("utf-8", "surrogateescape")))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:
            # RFC 9110 15.2: interim answers are not forwarded; the final one follows.
            self.header_list = []
            self.reason = ""
            return
        self.status = status
        self.head_done = True
        # Asked now: llhttp forgets the connection's state once the message ends.
        self.keep_alive = self.parser.should_keep_alive()
        if self.head_request or status in (204, 304):
            self.complete = True  # RFC 9112 6.3: no body, whatever Content-Length says
        elif not self._framed():
            self.until_eof = True  # RFC 9112 6.3 item 8: the body runs to the connection's close
        self._wake()

    def on_body(self, chunk: bytes) -> None:
        if self.complete:
            self.tainted = True  # a body after a HEAD, 204 or 304 answer
            return
        self.body.append(chunk)
        self.buffered += len(chunk)
        if self.buffered > _HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if not self.head_done:
            return  # the end of an interim (1xx) answer
        self.complete = True
        self._wake()

    # -- the exchange

    def _framed(self) -> bool:
        for name, value in self.header_list:
            lower = name.lower()
            # RFC 9112 6.3: chunked only frames the body when it is the last coding.
            if lower == "content-length" or (lower == "transfer-encoding"
                                             and value.lower().rstrip().endswith("chunked")):
                return True
        return False

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: BaseException) -> None:
        if self.error is None:
            self.error = error
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        if self.transport is not None:
            self.transport.abort()

    def start(self, *, head_request: bool, read_timeout: float | None) -> None:
        if self.idle_since:
            self.reused = True
            self._reset_exchange()
        self.in_exchange = True
        self.head_request = head_request
        self.read_timeout = read_timeout
        self.active_at = self.loop.time()

    async def _wait(self) -> None:
        """Until the parser has news (head, body bytes, the end) or the upstream went quiet."""
        if self.error is not None:
            raise self.error
        self.waiter = self.loop.create_future()
        if self.read_timeout is not None:
            deadline = self.active_at + self.read_timeout
            if self.timer is None or self.timer_at > deadline:  # none yet, or armed for a longer timeout
                self._arm(deadline)
        try:
            await self.waiter
        finally:
            self.waiter = None

    def _check_quiet(self) -> None:
        self.timer = None
        if self.waiter is None or self.read_timeout is None:
            return  # nobody is waiting: the next wait arms the timer again
        deadline = self.active_at + self.read_timeout
        if self.loop.time() >= deadline:
            self._fail(UpstreamTimeoutError(f"the upstream sent nothing for {self.read_timeout:g} s"))
        else:
            self._arm(deadline)

    def _arm(self, deadline: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = self.loop.call_at(deadline, self._check_quiet)
        self.timer_at = deadline

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    async def head(self) -> None:
        while not self.head_done:
            await self._wait()
        if self.error is not None:
            raise self.error

    async def next_chunk(self) -> bytes:
        while not self.body:
            if self.complete:
                return b""
            await self._wait()
        chunk = self.body.popleft()
        self.buffered -= len(chunk)
        self.active_at = self.loop.time()
        if self.paused and self.buffered < _LOW_WATER and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        return chunk

    def take_body(self) -> bytes:
        """Everything buffered, at once (the answer is complete: nothing more will come)."""
        body = b"".join(self.body)
        self.body.clear()
        self.buffered = 0
        return body

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    async def send_body(self, body: AsyncIterable[bytes], chunked: bool) -> None:
        """Stream the request body; a failure of the body's source is the exchange's failure."""
        try:
            async for chunk in body:
                if not chunk:
                    continue
                if self.closed:
                    return  # the upstream hung up; its answer (or the lost connection) says why
                self.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
                self.active_at = self.loop.time()
                if not self._writable:
                    self._drained = self.loop.create_future()
                    await self._drained
                    self.active_at = self.loop.time()
            if chunked and not self.closed:
                self.write(b"0\r\n\r\n")
        except UpstreamError:
            return
        except Exception as exc:  # the source's own error (body too large, client gone) ends the exchange
            self._fail(exc)

    def reusable(self) -> bool:
        return (self.complete and self.error is None and not self.closed and not self.until_eof
                and not self.tainted and not self.body and (self.body_task is None or self.body_task.done())
                and self.keep_alive)

    def finish(self) -> None:
        """The exchange is over: stop any upload still running (the timer lapses by itself)."""
        self.in_exchange = False
        if self.paused and self.transport is not None and not self.closed:
            self.paused = False  # a connection kept for the next exchange must be read again
            self.transport.resume_reading()
        if self.body_task is not None and not self.body_task.done():
            self.body_task.cancel()

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()

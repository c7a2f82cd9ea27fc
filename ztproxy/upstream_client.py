"""The upstream HTTP/1.1 client: pooled keep-alive connections, responses parsed by llhttp.

Forwarding is the proxy's hottest path, and aiohttp's general-purpose client (cookie
jar, redirects, URL building, tracing hooks, per-request timers) cost about twice what
the whole rest of a forwarded request costs. This client does only what forwarding needs:
it writes the request head the proxy already built, streams the body, and hands back the
status, headers and body as ``httptools`` (the llhttp parser, strict mode) reads them.
Parsing stays in the library; this module owns connections, framing choices and timeouts.

- One pool per process, idle connections kept per origin (scheme, host, port), most
  recently used first, closed after ``idle_timeout``; at most ``limit`` open in all.
- A fresh parser per exchange, so a HEAD answer (headers only, whatever Content-Length
  says) never confuses the next response on the connection.
- A reused connection that the upstream closed before answering a bodyless request gets
  one retry on a new connection (RFC 9110 9.3.1: safe to repeat, nothing was received).
- ``read_timeout`` bounds any wait for the upstream (headers or the next body bytes)
  with no byte received or sent; ``connect_timeout`` bounds only opening a connection.
- Response heads over ``max_header_bytes`` and anything llhttp refuses (bad framing,
  Content-Length with Transfer-Encoding, control characters) are protocol errors: 502.
- Request heads are checked for CR/LF/NUL in names and values before they are written.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from dataclasses import dataclass
from types import TracebackType

import httptools
from multidict import CIMultiDict

# RFC 9110 9.2.2: methods a client may repeat; only bodyless requests are ever retried.
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
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


class _Stale(UpstreamProtocolError):
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


def encode_head(method: str, target: str, headers: Iterable[tuple[str, str]]) -> bytes:
    """The request line and header block, refusing any CR, LF or NUL that would split them."""
    fields = [f"{name}: {value}\r\n" for name, value in headers]
    text = f"{method} {target} HTTP/1.1\r\n{''.join(fields)}\r\n"
    lines = len(fields) + 2
    # RFC 9112 2.2 / 5: a bare CR or LF in a field would let a value start a header of its own.
    if text.count("\n") != lines or text.count("\r") != lines or "\0" in text:
        raise ValueError("request head carries CR, LF or NUL inside a field")
    return text.encode("utf-8", "surrogateescape")


class UpstreamResponse:
    """Status and headers of the upstream's answer; the body is read or streamed from it.

    ``close()`` (or leaving ``async with``) hands the connection back to the pool when the
    answer was read to its end, and closes it otherwise.
    """

    __slots__ = ("_conn", "content_length", "raw_headers", "reason", "status")

    def __init__(self, conn: _Connection, status: int, reason: str, raw_headers: list[tuple[str, str]],
                 content_length: int | None) -> None:
        self._conn: _Connection | None = conn
        self.status = status
        self.reason = reason
        self.raw_headers = raw_headers  # in the upstream's order, repeated names kept
        self.content_length = content_length

    @property
    def headers(self) -> CIMultiDict[str]:
        return CIMultiDict(self.raw_headers)

    async def read(self) -> bytes:
        """The whole body."""
        conn = self._conn
        if conn is None:
            return b""
        if conn.complete:  # the usual case for a small answer: it came with the head
            body = b"".join(conn.body)
            conn.body.clear()
            conn.buffered = 0
            return body
        return b"".join([chunk async for chunk in self.iter_chunks()])

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        """Body bytes as they arrive, never more than the upstream sent."""
        conn = self._conn
        if conn is None:
            return
        while True:
            chunk = await conn.next_chunk()
            if not chunk:
                return
            yield chunk

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.pool.release(conn)

    async def __aenter__(self) -> UpstreamResponse:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        traceback: TracebackType | None) -> None:
        self.close()


class _Connection(asyncio.Protocol):
    """One keep-alive connection to an origin, serving one exchange at a time."""

    def __init__(self, pool: UpstreamPool, origin: Origin, max_header_bytes: int) -> None:
        self.pool = pool
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
                self._fail(_Stale("the upstream closed a kept-alive connection"))
            else:
                self._fail(UpstreamProtocolError("the upstream closed the connection before the answer ended"))
        if self._drained is not None and not self._drained.done():
            self._drained.set_exception(UpstreamProtocolError("the upstream closed the connection"))
        self._cancel_timer()
        self.pool.forget(self)

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


class UpstreamPool:
    """Keep-alive connections to the upstreams, shared by every request of a worker."""

    def __init__(self, *, limit: int = 1000, idle_timeout: float = 15.0, max_header_bytes: int = 64 * 1024,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.limit = limit
        self.idle_timeout = idle_timeout
        self.max_header_bytes = max_header_bytes
        self._ssl = ssl_context
        self._idle: dict[Origin, list[_Connection]] = {}
        self._open: set[_Connection] = set()
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False

    @property
    def open_connections(self) -> int:
        return len(self._open)

    @property
    def idle_connections(self) -> int:
        return sum(len(idle) for idle in self._idle.values())

    async def request(self, origin: Origin, method: str, target: str, headers: Iterable[tuple[str, str]],
                      body: AsyncIterable[bytes] | None = None, *, chunked: bool = False,
                      connect_timeout: float | None = None,
                      read_timeout: float | None = None) -> UpstreamResponse:
        """Send one request and return once the answer's head is in.

        ``headers`` must carry ``Host`` and the body's framing (``Content-Length``, or
        ``chunked=True`` for a body of unknown length, sent chunked).
        """
        head = encode_head(method, target, headers)
        if chunked:
            head = head[:-2] + b"Transfer-Encoding: chunked\r\n\r\n"
        retry = body is None and method in IDEMPOTENT
        fresh = False
        while True:
            conn = await self._acquire(origin, connect_timeout, fresh=fresh)
            conn.start(head_request=method == "HEAD", read_timeout=read_timeout)
            try:
                conn.write(head)
                if body is not None:
                    conn.body_task = asyncio.get_running_loop().create_task(conn.send_body(body, chunked))
                await conn.head()
            except _Stale:
                self.release(conn)
                if retry:
                    retry = False
                    fresh = True
                    continue
                raise UpstreamProtocolError("the upstream closed the connection before answering") from None
            except BaseException:
                self.release(conn)
                raise
            return UpstreamResponse(conn, conn.status, conn.reason, conn.header_list,
                                    _content_length(conn.header_list))

    async def _acquire(self, origin: Origin, connect_timeout: float | None, *, fresh: bool = False) -> _Connection:
        if not fresh and (conn := self._take_idle(origin)) is not None:
            return conn
        while len(self._open) >= self.limit:
            if self._evict_idle():
                continue
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self._wake_waiter()  # our turn came as we were cancelled: pass it on
                raise
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
            if not fresh and (conn := self._take_idle(origin)) is not None:
                return conn
        return await self._connect(origin, connect_timeout)

    def _take_idle(self, origin: Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        now = time.monotonic()
        while idle:
            conn = idle.pop()  # the most recently used: the least likely to be timed out upstream
            if not conn.closed and now - conn.idle_since < self.idle_timeout:
                return conn
            self._discard(conn)
        return None

    def _evict_idle(self) -> bool:
        """At the limit: close the longest-idle connection to any origin, if there is one."""
        oldest = min((conns[0] for conns in self._idle.values() if conns), key=lambda conn: conn.idle_since,
                     default=None)
        if oldest is None:
            return False
        self._discard(oldest)
        return True

    def _discard(self, conn: _Connection) -> None:
        conn.close()
        self.forget(conn)

    async def _connect(self, origin: Origin, connect_timeout: float | None) -> _Connection:
        if self._closed:
            raise UpstreamConnectError("the proxy is shutting down")
        loop = asyncio.get_running_loop()
        context = None
        if origin.tls:
            context = self._ssl or ssl.create_default_context()
            self._ssl = context
        conn = _Connection(self, origin, self.max_header_bytes)
        self._open.add(conn)
        try:
            async with asyncio.timeout(connect_timeout):
                await loop.create_connection(lambda: conn, origin.host, origin.port, ssl=context,
                                             server_hostname=origin.host if context else None)
        except TimeoutError:
            self.forget(conn)
            conn.close()
            raise UpstreamTimeoutError(f"no connection to the upstream within {connect_timeout:g} s") from None
        except (OSError, ssl.SSLError) as exc:
            self.forget(conn)
            raise UpstreamConnectError(f"cannot connect to the upstream: {exc}") from exc
        except BaseException:
            self.forget(conn)
            conn.close()
            raise
        return conn

    def release(self, conn: _Connection) -> None:
        """The exchange is over: keep the connection for the next one if it can be trusted."""
        conn.finish()
        if conn.reusable() and not self._closed:
            conn.idle_since = time.monotonic()
            self._idle.setdefault(conn.origin, []).append(conn)
            if self._sweeper is None:
                self._sweeper = conn.loop.call_later(self.idle_timeout, self._sweep)
        else:
            self._discard(conn)
        self._wake_waiter()

    def forget(self, conn: _Connection) -> None:
        """Drop a closed connection from the books."""
        if conn in self._open:
            self._open.discard(conn)
            idle = self._idle.get(conn.origin)
            if idle is not None and conn in idle:
                idle.remove(conn)
            self._wake_waiter()

    def _wake_waiter(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _sweep(self) -> None:
        self._sweeper = None
        cutoff = time.monotonic() - self.idle_timeout
        for conns in self._idle.values():
            for conn in [conn for conn in conns if conn.idle_since <= cutoff]:
                conns.remove(conn)
                conn.close()
        if any(self._idle.values()) and not self._closed:
            self._sweeper = asyncio.get_running_loop().call_later(self.idle_timeout / 2, self._sweep)

    async def close(self) -> None:
        """Close every connection (in-flight exchanges fail as if the upstream hung up)."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conn in list(self._open):
            conn.close()
        self._idle.clear()
        await asyncio.sleep(0)  # the transports finish closing on the loop's next turn


def _content_length(headers: list[tuple[str, str]]) -> int | None:
    for name, value in headers:
        if name.lower() == "content-length":
            return int(value)  # llhttp accepted it: digits only, one value
    return None

"""The pool of upstream connections, the request head, and the response handed to forwarding."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from types import TracebackType

from multidict import CIMultiDict

from ztproxy.upstream_client.connection import (
    Connection,
    Origin,
    StaleConnection,
    UpstreamConnectError,
    UpstreamProtocolError,
    UpstreamTimeoutError,
)

# RFC 9110 9.2.2: methods a client may repeat; only bodyless requests are ever retried.
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


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

    __slots__ = ("_conn", "_pool", "content_length", "raw_headers", "reason", "status")

    def __init__(self, pool: UpstreamPool, conn: Connection, status: int, reason: str,
                 raw_headers: list[tuple[str, str]], content_length: int | None) -> None:
        self._pool = pool
        self._conn: Connection | None = conn
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
            return conn.take_body()
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
            self._pool.release(conn)

    async def __aenter__(self) -> UpstreamResponse:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        traceback: TracebackType | None) -> None:
        self.close()


class UpstreamPool:
    """Keep-alive connections to the upstreams, shared by every request of a worker."""

    def __init__(self, *, limit: int = 1000, idle_timeout: float = 15.0, max_header_bytes: int = 64 * 1024,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.limit = limit
        self.idle_timeout = idle_timeout
        self.max_header_bytes = max_header_bytes
        self._ssl = ssl_context
        self._idle: dict[Origin, list[Connection]] = {}
        self._open: set[Connection] = set()
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
            except StaleConnection:
                self.release(conn)
                if retry:
                    retry = False
                    fresh = True
                    continue
                raise UpstreamProtocolError("the upstream closed the connection before answering") from None
            except BaseException:
                self.release(conn)
                raise
            return UpstreamResponse(self, conn, conn.status, conn.reason, conn.header_list,
                                    _content_length(conn.header_list))

    async def _acquire(self, origin: Origin, connect_timeout: float | None, *, fresh: bool = False) -> Connection:
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

    def _take_idle(self, origin: Origin) -> Connection | None:
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

    def _discard(self, conn: Connection) -> None:
        conn.close()
        self.forget(conn)

    async def _connect(self, origin: Origin, connect_timeout: float | None) -> Connection:
        if self._closed:
            raise UpstreamConnectError("the proxy is shutting down")
        loop = asyncio.get_running_loop()
        context = None
        if origin.tls:
            context = self._ssl or ssl.create_default_context()
            self._ssl = context
        conn = Connection(origin, self.max_header_bytes, self.forget)
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

    def release(self, conn: Connection) -> None:
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

    def forget(self, conn: Connection) -> None:
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

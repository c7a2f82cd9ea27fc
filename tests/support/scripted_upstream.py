"""A scripted HTTP/1.1 upstream on loopback: a coroutine per connection reads requests, writes exact bytes.

For testing the proxy's upstream client against answers a real server would never send
(malformed heads, wrong framing, early closes, stalls, unsolicited bytes). The server
keeps what it saw, so tests can assert on the wire:

- ``connections``: every accepted TCP connection, in order, with the requests read on it
  and whether the client closed it (EOF or reset);
- ``open_now`` / ``most_open``: connections open at the moment, and the most at once.

A script is ``async def script(conn: UpstreamConnection) -> None``; when it returns, the
server closes that connection. ``respond_in_turn`` builds the usual one, ``answer_then_close``
a one-shot one; ``answer`` and ``chunked_body`` write the bytes of well-formed answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from ztproxy.upstream_client import Origin

# How long a test may wait for something the upstream should see (bounded, never a sleep).
SEEN_WITHIN = 2.0


@dataclass(frozen=True)
class ReceivedRequest:
    """One request as the upstream read it: the head verbatim and the decoded body."""

    head: bytes
    body: bytes

    @property
    def request_line(self) -> str:
        return self.head.split(b"\r\n", 1)[0].decode("latin-1")

    @property
    def method(self) -> str:
        return self.request_line.split(" ", 1)[0]

    @property
    def headers(self) -> list[tuple[str, str]]:
        lines = self.head.decode("latin-1").split("\r\n")[1:]
        pairs = [line.split(":", 1) for line in lines if line]
        return [(name, value.strip()) for name, value in pairs]

    def header(self, name: str) -> str | None:
        return next((value for key, value in self.headers if key.lower() == name.lower()), None)


@dataclass
class UpstreamConnection:
    """The upstream's side of one accepted connection."""

    index: int
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    requests: list[ReceivedRequest] = field(default_factory=list)
    closed_by_client: asyncio.Event = field(default_factory=asyncio.Event)

    async def read_request(self) -> ReceivedRequest | None:
        """The next request, body included; None once the client closed or reset the connection."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
            request = ReceivedRequest(head, b"")
            if (request.header("Transfer-Encoding") or "").lower() == "chunked":
                body = await self._read_chunked()
            else:
                body = await self.reader.readexactly(int(request.header("Content-Length") or 0))
        except (asyncio.IncompleteReadError, ConnectionError):
            self.closed_by_client.set()
            return None
        request = ReceivedRequest(head, body)
        self.requests.append(request)
        return request

    async def _read_chunked(self) -> bytes:
        body = bytearray()
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                while await self.reader.readuntil(b"\r\n") != b"\r\n":
                    pass  # trailer fields
                return bytes(body)
            body += await self.reader.readexactly(size)
            await self.reader.readexactly(2)

    async def send(self, *parts: bytes, pause: float = 0.0) -> None:
        """Write each part on its own (drained), with ``pause`` seconds between parts."""
        for number, part in enumerate(parts):
            if number and pause:
                await asyncio.sleep(pause)
            self.writer.write(part)
            await self.writer.drain()

    async def wait_for_client_close(self) -> bytes:
        """Read until the client closes the connection; what it sent meanwhile is returned."""
        data = bytearray()
        try:
            while chunk := await self.reader.read(65536):
                data += chunk
        except ConnectionError:
            pass
        self.closed_by_client.set()
        return bytes(data)


Script = Callable[[UpstreamConnection], Awaitable[None]]


class ScriptedUpstream:
    """A TCP (or TLS) server on 127.0.0.1, a free port, running ``script`` for each connection."""

    def __init__(self, script: Script, *, ssl_context: ssl.SSLContext | None = None) -> None:
        self.script = script
        self.ssl_context = ssl_context
        self.connections: list[UpstreamConnection] = []
        self.open_now = 0
        self.most_open = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def origin(self, scheme: str = "http", host: str = "127.0.0.1") -> Origin:
        return Origin(scheme, host, self.port)

    @property
    def requests(self) -> list[ReceivedRequest]:
        """Every request read, on every connection, in the order of the connections."""
        return [request for conn in self.connections for request in conn.requests]

    async def start(self) -> ScriptedUpstream:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.ssl_context)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        conn = UpstreamConnection(len(self.connections), reader, writer)
        self.connections.append(conn)
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        try:
            await self.script(conn)
        except (ConnectionError, asyncio.IncompleteReadError):
            conn.closed_by_client.set()
        except asyncio.CancelledError:
            pass  # the test is over: close() stops every connection still open
        finally:
            self.open_now -= 1
            writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError, TimeoutError):
                async with asyncio.timeout(1):
                    await writer.wait_closed()
            self._tasks.discard(task)

    async def wait_until(self, condition: Callable[[], bool], within: float = SEEN_WITHIN) -> None:
        """Poll ``condition`` until it holds; TimeoutError after ``within`` seconds."""
        async with asyncio.timeout(within):
            while not condition():
                await asyncio.sleep(0.005)

    async def close(self) -> None:
        await stop_serving(self._server, self._tasks)


async def stop_serving(server: asyncio.Server | None, tasks: set[asyncio.Task[None]]) -> None:
    """Stop accepting, cancel every connection's task (bounded), then wait for the server to close."""
    if server is not None:
        server.close()
    for task in list(tasks):
        task.cancel()
    if tasks:
        await asyncio.wait(list(tasks), timeout=2)
    if server is not None:
        await server.wait_closed()


def respond_in_turn(*answers: bytes | Sequence[bytes] | None, pause: float = 0.0) -> Script:
    """Each request, on whichever connection it comes, gets the next answer of ``answers``.

    An answer is bytes, or a sequence of parts written apart (``pause`` seconds between);
    ``None`` closes the connection right after reading that request, without answering.
    Once the answers run out, requests are still read (and kept) but never answered.
    """
    turn = iter(answers)

    async def script(conn: UpstreamConnection) -> None:
        while await conn.read_request() is not None:
            answer = next(turn, ())
            if answer is None:
                return
            await conn.send(*([answer] if isinstance(answer, bytes) else answer), pause=pause)

    return script


def answer_then_close(*parts: bytes, linger: float = 0.0) -> Script:
    """Read one request, write ``parts``, wait ``linger`` seconds, close."""
    async def script(conn: UpstreamConnection) -> None:
        if await conn.read_request() is not None:
            await conn.send(*parts)
            await asyncio.sleep(linger)
    return script


def answer(body: bytes, *headers: str, status: str = "200 OK", version: str = "HTTP/1.1") -> bytes:
    """An answer framed by Content-Length, with extra header lines as given."""
    lines = [f"{version} {status}", *headers, f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def chunked_body(*pieces: bytes) -> bytes:
    """A chunked body: each piece one chunk, then the last chunk."""
    return b"".join(b"%x\r\n%b\r\n" % (len(piece), piece) for piece in pieces) + b"0\r\n\r\n"

"""Spike: the per-request work of ``work.py`` on an asyncio protocol with httptools (llhttp),
as uvicorn's ``httptools`` protocol does: parse, handle one request at a time per
connection (pipelined ones wait, reading paused), answer with one write.

What this core leaves out and a real one must own is listed in bench/README.md.

    python bench/spikes/httptools_core.py --listen 127.0.0.1:8081 --upstream http://127.0.0.1:8080 [--workers 2]
"""

from __future__ import annotations

import asyncio
from collections import deque
from http import HTTPStatus

import httptools
from work import Forwarder, parse_listen_args, run_workers, until_stopped

BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class HttpProtocol(asyncio.Protocol):
    def __init__(self, forwarder: Forwarder) -> None:
        self.forwarder = forwarder
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.client = ""
        self.url = b""
        self.headers: list[tuple[str, str]] = []
        self.body: list[bytes] = []
        self.pending: deque[tuple[str, str, list[tuple[str, str]], bytes, bool]] = deque()
        self.task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's TCPTransport
        peer = transport.get_extra_info("peername")
        self.client = peer[0] if peer else ""

    def connection_lost(self, exc: Exception | None) -> None:
        if self.task is not None:
            self.task.cancel()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            assert self.transport is not None
            self.transport.write(BAD_REQUEST)
            self.transport.close()

    # llhttp callbacks
    def on_message_begin(self) -> None:
        self.url, self.headers, self.body = b"", [], []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        method = self.parser.get_method().decode("ascii")
        self.pending.append((method, self.url.decode("latin-1"), self.headers, b"".join(self.body),
                             self.parser.should_keep_alive()))
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self.serve())
        elif self.transport is not None:
            self.transport.pause_reading()

    async def serve(self) -> None:
        transport = self.transport
        assert transport is not None
        while self.pending:
            method, target, headers, body, keep_alive = self.pending.popleft()
            status, out, content = await self.forwarder.handle(method, target, headers, self.client, body or None)
            reason = HTTPStatus(status).phrase
            head = [f"HTTP/1.1 {status} {reason}\r\n"]
            head += [f"{name}: {value}\r\n" for name, value in out]
            head.append(f"Content-Length: {len(content)}\r\n")
            if not keep_alive:
                head.append("Connection: close\r\n")
            head.append("\r\n")
            transport.write("".join(head).encode("latin-1") + content)
            if not keep_alive:
                transport.close()
                return
        transport.resume_reading()
        self.task = None


def main() -> None:
    host, port, upstream, workers = parse_listen_args()

    async def serve() -> None:
        forwarder = Forwarder(upstream)
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: HttpProtocol(forwarder), host, port, reuse_port=True,
                                          backlog=1024)
        try:
            await until_stopped()
        finally:
            server.close()
            await forwarder.pool.close()

    run_workers(serve, workers)


if __name__ == "__main__":
    main()

"""Spike: the per-request work of ``work.py`` on an httptools (llhttp) protocol that still
hands the handler aiohttp's ``web.Request`` and writes aiohttp's ``web.Response``.

What ztproxy's pipeline reads is aiohttp's request object everywhere; this core measures
what is left of the httptools saving when only aiohttp's connection handling (its
``RequestHandler``: parser wrapper, message queue, waiter, per-request task, router) is
replaced and its request and response objects are kept.

    python bench/spikes/llhttp_aiohttp_core.py --listen 127.0.0.1:8081 --upstream http://127.0.0.1:8080
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

import httptools
from aiohttp import web
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http import HttpVersion11
from aiohttp.http_parser import RawRequestMessage
from aiohttp.http_writer import StreamWriter
from aiohttp.streams import EMPTY_PAYLOAD
from aiohttp_core import handler_for
from multidict import CIMultiDict, CIMultiDictProxy
from work import Forwarder, parse_listen_args, run_workers, until_stopped
from yarl import URL

BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class HttpProtocol(BaseProtocol):
    def __init__(self, app: web.Application, handler: Any) -> None:
        super().__init__(asyncio.get_running_loop())
        self.app = app
        self.handler = handler
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.pending: deque[RawRequestMessage] = deque()
        self.task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        # What BaseRequest reads from its protocol.
        self.ssl_context = transport.get_extra_info("sslcontext")
        self.peername = transport.get_extra_info("peername")
        self.sockname = transport.get_extra_info("sockname")
        self.max_field_size = 8190
        self.max_headers = 128

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self.task is not None:
            self.task.cancel()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            assert self.transport is not None
            self.transport.write(BAD_REQUEST)
            self.transport.close()

    def on_message_begin(self) -> None:
        self.url, self.headers = b"", []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_message_complete(self) -> None:
        path = self.url.decode("latin-1")
        raw = tuple(self.headers)
        headers = CIMultiDictProxy(CIMultiDict((n.decode("latin-1"), v.decode("latin-1")) for n, v in raw))
        close = not self.parser.should_keep_alive()
        path_part, _, query = path.partition("?")
        url = URL.build(path=path_part, query_string=query, encoded=True)
        message = RawRequestMessage(self.parser.get_method().decode("ascii"), path, HttpVersion11, headers, raw,
                                    close, None, False, False, url)
        self.pending.append(message)
        if self.task is None:
            self.task = self._loop.create_task(self.serve())
        elif self.transport is not None:
            self.transport.pause_reading()

    async def serve(self) -> None:
        transport = self.transport
        assert transport is not None
        while self.pending:
            message = self.pending.popleft()
            writer = StreamWriter(self, self._loop)
            request = self.app._make_request(message, EMPTY_PAYLOAD, self, writer, self.task)  # type: ignore[arg-type]
            response = await self.handler(request)
            await response.prepare(request)
            await response.write_eof()
            if message.should_close:
                transport.close()
                return
        transport.resume_reading()
        self.task = None


def main() -> None:
    host, port, upstream, workers = parse_listen_args()

    async def serve() -> None:
        forwarder = Forwarder(upstream)

        app = web.Application()
        app._set_loop(asyncio.get_running_loop())
        loop = asyncio.get_running_loop()
        handler = handler_for(forwarder)
        server = await loop.create_server(lambda: HttpProtocol(app, handler), host, port, reuse_port=True,
                                          backlog=1024)
        try:
            await until_stopped()
        finally:
            server.close()
            await forwarder.pool.close()

    run_workers(serve, workers)


if __name__ == "__main__":
    main()

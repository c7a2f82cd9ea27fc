"""A TCP relay on loopback that hands a server's answers back in small, late segments.

Loopback delivers one write as one segment, so a client that reads "what has arrived" as
if it were the whole answer passes every test and fails on the first real network. Put
this in front of a server (the IdP): what the client sends goes through as it is; what the
server answers comes back ``segment`` bytes at a time, ``pause`` seconds apart, with
Nagle off so each piece leaves as a segment of its own. ``sent_upstream`` keeps what the
clients sent, so a test can tell which calls went through.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

from tests.conftest import free_port
from tests.support.scripted_upstream import stop_serving


class SegmentingRelay:
    def __init__(self, target_port: int, *, segment: int = 48, pause: float = 0.001) -> None:
        self.target_port = target_port
        self.segment = segment
        self.pause = pause
        self.port = free_port()
        self.sent_upstream = bytearray()
        self.answers_split = 0  # reads from the server handed back in two segments or more
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> SegmentingRelay:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)
        return self

    async def close(self) -> None:
        await stop_serving(self._server, self._tasks)

    async def _relay(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        client_socket = client_writer.get_extra_info("socket")
        if client_socket is not None:
            client_socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            server_reader, server_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_writer.close()
            self._tasks.discard(task)
            return
        try:
            await asyncio.gather(self._to_server(client_reader, server_writer),
                                 self._to_client(server_reader, client_writer))
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            for writer in (client_writer, server_writer):
                writer.close()
                with contextlib.suppress(ConnectionError, OSError):
                    await writer.wait_closed()
            self._tasks.discard(task)

    async def _to_server(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            self.sent_upstream += data
            writer.write(data)
            await writer.drain()
        writer.write_eof()

    async def _to_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            if len(data) > self.segment:
                self.answers_split += 1
            for start in range(0, len(data), self.segment):
                writer.write(data[start:start + self.segment])
                await writer.drain()
                await asyncio.sleep(self.pause)
        if writer.can_write_eof():
            writer.write_eof()

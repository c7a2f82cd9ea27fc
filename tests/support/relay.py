"""TCP relays on loopback: one that hands a server's answers back in small, late segments, and
one that impairs a connection as a slow, lossy network does (:class:`ImpairedRelay`).

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
import random
import socket
import struct
from dataclasses import dataclass
from typing import Self

from tests.conftest import free_port
from tests.support.scripted_upstream import stop_serving


class _Relay:
    """Listens on a free loopback port; each connection is carried by ``_relay`` to ``target_port``."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> Self:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)
        return self

    async def close(self) -> None:
        await stop_serving(self._server, self._tasks)

    async def _relay(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError


class SegmentingRelay(_Relay):
    def __init__(self, target_port: int, *, segment: int = 48, pause: float = 0.001) -> None:
        super().__init__(target_port)
        self.segment = segment
        self.pause = pause
        self.sent_upstream = bytearray()
        self.answers_split = 0  # reads from the server handed back in two segments or more

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


@dataclass(frozen=True)
class Impairments:
    """What an :class:`ImpairedRelay` does to the traffic it carries (a slow, lossy network).

    Every answer (what the server sends) is held ``latency`` seconds (uniform in the range;
    a piece never overtakes the one before it), so each request/answer exchange takes that
    much longer; both ways, data is written ``segment`` bytes at a time. Each piece a client
    sends is, with probability ``reset``, not delivered: both connections are reset instead
    (RST); with probability ``drop``, neither it nor anything after it is delivered, either
    way, until the client gives up (a connection gone dead).
    """

    latency: tuple[float, float] = (0.05, 0.3)
    segment: int = 64
    reset: float = 0.02
    drop: float = 0.01

    def describe(self) -> str:
        low, high = self.latency
        return (f"{low * 1000:.0f}-{high * 1000:.0f} ms added to each round trip, {self.segment}-byte segments, "
                f"{self.reset:.0%} of client writes reset, {self.drop:.0%} dropped")


class ImpairedRelay(_Relay):
    """A TCP relay on loopback that carries a connection as :class:`Impairments` says.

    ``resets`` and ``drops`` count what it did, so a report can say the faults happened.
    """

    def __init__(self, target_port: int, impairments: Impairments, *, seed: int | None = None) -> None:
        super().__init__(target_port)
        self.impairments = impairments
        self.resets = 0
        self.drops = 0
        self._random = random.Random(seed)

    async def _relay(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        writers = [client_writer]
        try:
            server_reader, server_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
            writers.append(server_writer)
            for writer in writers:
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            dead = asyncio.Event()  # a dropped connection: nothing more is delivered
            answers: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
            await asyncio.gather(self._requests(client_reader, server_writer, writers, dead),
                                 self._answers(server_reader, answers, writers, dead),
                                 self._deliver(answers, client_writer))
        except OSError:
            pass
        finally:
            for writer in writers:
                writer.close()
            self._tasks.discard(task)

    async def _requests(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        writers: list[asyncio.StreamWriter], dead: asyncio.Event) -> None:
        """Client to server, at once; a piece may reset the connection or leave it dead."""
        try:
            while data := await reader.read(65536):
                if not dead.is_set():
                    roll = self._random.random()
                    if roll < self.impairments.reset:
                        self.resets += 1
                        for each in writers:
                            _reset(each)
                        return
                    if roll < self.impairments.reset + self.impairments.drop:
                        self.drops += 1
                        dead.set()
                if dead.is_set():
                    continue  # read and thrown away, as a dead path does, until the client gives up
                await _write_segments(writer, data, self.impairments.segment)
        except OSError:
            pass
        if dead.is_set():
            for each in writers:  # the client gave up on the dead path: let the server go too
                each.close()
        elif writer.can_write_eof() and not writer.is_closing():
            with contextlib.suppress(OSError):
                writer.write_eof()

    async def _answers(self, reader: asyncio.StreamReader, answers: asyncio.Queue[tuple[float, bytes]],
                       writers: list[asyncio.StreamWriter], dead: asyncio.Event) -> None:
        """Server to client: each piece queued with the time it is due (its arrival plus the latency)."""
        low, high = self.impairments.latency
        loop = asyncio.get_running_loop()
        due = 0.0
        try:
            while data := await reader.read(65536):
                if not dead.is_set():
                    due = max(due, loop.time() + self._random.uniform(low, high))
                    answers.put_nowait((due, data))
        except OSError:
            pass
        answers.put_nowait((due, b""))  # the end

    async def _deliver(self, answers: asyncio.Queue[tuple[float, bytes]], writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                due, data = await answers.get()
                await asyncio.sleep(max(0.0, due - loop.time()))
                if not data:
                    break
                await _write_segments(writer, data, self.impairments.segment)
            if writer.can_write_eof() and not writer.is_closing():
                writer.write_eof()
        except OSError:
            pass


async def _write_segments(writer: asyncio.StreamWriter, data: bytes, segment: int) -> None:
    for start in range(0, len(data), segment):
        writer.write(data[start:start + segment])
        await writer.drain()


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        # SO_LINGER on, timeout 0: close() sends RST instead of FIN (a reset connection).
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()

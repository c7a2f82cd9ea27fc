"""A small HTTP/2 client on the ``h2`` library, for tests: whole exchanges, and the frames attacks send.

``H2Client.connect`` opens TLS with ALPN h2 (or h2c with prior knowledge without a context);
``request`` sends one request and waits for its end (response, trailers, or RST_STREAM);
``conn`` and ``send`` let a test write frames a well-behaved client never would.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    InformationalResponseReceived,
    RemoteSettingsChanged,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from h2.exceptions import ProtocolError, StreamClosedError
from hpack import Encoder
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    RstStreamFrame,
    SettingsFrame,
)

Headers = list[tuple[str, str]]
WAIT = 30.0  # generous: a bound for when something is wrong, on a busy machine


@dataclass
class H2Response:
    stream_id: int
    status: int = 0
    headers: Headers = field(default_factory=list)
    body: bytes = b""
    trailers: Headers = field(default_factory=list)
    informational: list[int] = field(default_factory=list)
    reset: int | None = None  # the RST_STREAM error code, when the server reset the stream
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def header(self, name: str) -> str | None:
        return next((value for key, value in self.headers if key == name), None)

    def header_values(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name]


class H2Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.conn = H2Connection(H2Configuration(client_side=True, header_encoding="utf-8"))
        self.responses: dict[int, H2Response] = {}
        self.goaway: ConnectionTerminated | None = None
        self.goaway_seen = asyncio.Event()
        self.closed = asyncio.Event()
        self.alpn: str | None = None
        self._window = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def connect(cls, port: int, context: ssl.SSLContext | None = None, *,
                      server_hostname: str = "localhost") -> H2Client:
        if context is not None:
            context.set_alpn_protocols(["h2"])
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context,
                                                       server_hostname=server_hostname if context else None)
        client = cls(reader, writer)
        ssl_object = writer.get_extra_info("ssl_object")
        client.alpn = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
        client.conn.initiate_connection()
        client.send()
        client._task = asyncio.create_task(client._read())
        return client

    def send(self) -> None:
        data = self.conn.data_to_send()
        if data and not self.writer.is_closing():
            self.writer.write(data)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()

    def start(self, method: str, path: str, headers: Headers = (), *, authority: str = "localhost",
              scheme: str = "https", end_stream: bool = True) -> H2Response:
        """Send a request's headers; the response fills in as frames arrive."""
        stream_id = self.conn.get_next_available_stream_id()
        block = [(":method", method), (":scheme", scheme), (":authority", authority), (":path", path), *headers]
        self.conn.send_headers(stream_id, block, end_stream=end_stream)
        self.send()
        response = self.responses[stream_id] = H2Response(stream_id)
        return response

    async def request(self, method: str, path: str, headers: Headers = (), *, body: bytes = b"",
                      authority: str = "localhost") -> H2Response:
        response = self.start(method, path, list(headers), authority=authority, end_stream=not body)
        if body:
            await self.send_body(response.stream_id, body)
        await asyncio.wait_for(response.done.wait(), WAIT)
        return response

    async def send_body(self, stream_id: int, body: bytes, *, end_stream: bool = True) -> None:
        """Send as the windows allow; stop when the server closes the stream (an early answer, a reset)."""
        with contextlib.suppress(StreamClosedError):
            await self._send_body(stream_id, body, end_stream=end_stream)

    async def _send_body(self, stream_id: int, body: bytes, *, end_stream: bool) -> None:
        view = memoryview(body)
        while view:
            size = min(self.conn.local_flow_control_window(stream_id), self.conn.max_outbound_frame_size, len(view))
            if size <= 0:
                self._window.clear()
                await self._window.wait()
                continue
            self.conn.send_data(stream_id, view[:size].tobytes())
            self.send()
            await self.writer.drain()
            view = view[size:]
        if end_stream:
            self.conn.end_stream(stream_id)
            self.send()

    async def wait_closed(self) -> None:
        await asyncio.wait_for(self.closed.wait(), WAIT)

    async def _read(self) -> None:
        try:
            while data := await self.reader.read(65536):
                try:
                    events = self.conn.receive_data(data)
                except ProtocolError:
                    break
                for event in events:
                    self._on(event)
                self.send()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            self.closed.set()
            self._window.set()
            for response in self.responses.values():
                response.done.set()

    def _on(self, event: object) -> None:
        if isinstance(event, ResponseReceived) and (response := self.responses.get(event.stream_id)):
            response.headers = [(str(k), str(v)) for k, v in event.headers]
            response.status = int(dict(response.headers)[":status"])
        elif isinstance(event, InformationalResponseReceived) and (response := self.responses.get(event.stream_id)):
            response.informational.append(int(dict(event.headers)[":status"]))
        elif isinstance(event, DataReceived):
            if (response := self.responses.get(event.stream_id)) is not None:
                response.body += event.data
            self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, TrailersReceived) and (response := self.responses.get(event.stream_id)):
            response.trailers = [(str(k), str(v)) for k, v in event.headers]
        elif isinstance(event, StreamEnded) and (response := self.responses.get(event.stream_id)):
            response.done.set()
        elif isinstance(event, StreamReset) and (response := self.responses.get(event.stream_id)):
            response.reset = int(event.error_code)
            response.done.set()
            self._window.set()  # a sender waiting for this stream's window stops
        elif isinstance(event, (WindowUpdated, RemoteSettingsChanged)):
            self._window.set()
        elif isinstance(event, ConnectionTerminated):
            self.goaway = event
            self.goaway_seen.set()


class RawH2:
    """Frames written by hand (hyperframe, HPACK by ``hpack``): what attacks send, and every frame back.

    The SETTINGS preface is sent without acknowledging the server's, unless ``ack`` says so:
    the server's own limits must hold before a client agrees to them.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.encoder = Encoder()
        self.received: list[Frame] = []

    @classmethod
    async def connect(cls, port: int, context: ssl.SSLContext | None = None, *, ack: bool = False) -> RawH2:
        if context is not None:
            context.set_alpn_protocols(["h2"])
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context,
                                                       server_hostname="localhost" if context else None)
        raw = cls(reader, writer)
        raw.write(PREFACE + SettingsFrame(0).serialize())
        if ack:
            raw.write(SettingsFrame(0, flags=["ACK"]).serialize())
        return raw

    def write(self, data: bytes) -> None:
        self.writer.write(data)

    def header_block(self, path: str = "/", headers: Headers = (), *, method: str = "GET") -> bytes:
        return bytes(self.encoder.encode([(":method", method), (":scheme", "https"), (":authority", "localhost"),
                                          (":path", path), *headers]))

    def headers(self, stream_id: int, block: bytes, *, end_stream: bool = True, end_headers: bool = True) -> None:
        flags = (["END_STREAM"] if end_stream else []) + (["END_HEADERS"] if end_headers else [])
        self.write(HeadersFrame(stream_id, data=block, flags=flags).serialize())

    def continuation(self, stream_id: int, block: bytes, *, end_headers: bool = False) -> None:
        self.write(ContinuationFrame(stream_id, data=block, flags=["END_HEADERS"] if end_headers else []).serialize())

    def rst(self, stream_id: int, code: int = 8) -> None:  # 8: CANCEL
        self.write(RstStreamFrame(stream_id, error_code=code).serialize())

    async def read_until_closed(self) -> list[Frame]:
        """Every frame the server sends until it closes the connection (TimeoutError if it never does)."""
        async with asyncio.timeout(WAIT):
            buffer = b""
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                while chunk := await self.reader.read(65536):
                    buffer += chunk
                    buffer = self._parse(buffer)
        return self.received

    async def read_until(self, predicate: Callable[[Frame], bool]) -> Frame:
        async with asyncio.timeout(WAIT):
            buffer = b""
            while True:
                for frame in self.received:
                    if predicate(frame):
                        return frame
                chunk = await self.reader.read(65536)
                if not chunk:
                    raise ConnectionError("closed before the frame came")
                buffer = self._parse(buffer + chunk)

    def _parse(self, buffer: bytes) -> bytes:
        while len(buffer) >= 9:
            frame, length = Frame.parse_frame_header(memoryview(buffer[:9]))
            if len(buffer) < 9 + length:
                break
            frame.parse_body(memoryview(buffer[9:9 + length]))
            self.received.append(frame)
            buffer = buffer[9 + length:]
        return buffer

    def close(self) -> None:
        self.writer.close()


PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def goaway(frames: list[Frame]) -> GoAwayFrame | None:
    return next((frame for frame in frames if isinstance(frame, GoAwayFrame)), None)


def data_frame(stream_id: int, data: bytes, *, end_stream: bool = True) -> bytes:
    return DataFrame(stream_id, data=data, flags=["END_STREAM"] if end_stream else []).serialize()


def echo_app(argv: list[str]) -> web.Application:
    """An upstream answering with the request body's size (an ``aiohttp.web`` app factory's signature)."""
    async def size(request: web.Request) -> web.Response:
        return web.Response(text=str(len(await request.read())))

    app = web.Application(client_max_size=2**30)
    app.router.add_route("*", "/{path:.*}", size)
    return app

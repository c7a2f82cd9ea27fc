"""One end of an HTTP/2 connection over asyncio: the ``h2`` state machine, its bytes, its windows.

The server side (``server.py``: clients of the proxy) and the client side (``client.py``:
gRPC upstreams) share what both ends of a connection do the same way: hand the socket's
bytes to ``h2.connection.H2Connection`` (which parses every frame and HPACK block), write
what it wants sent, and send bodies no faster than the peer's flow-control windows allow
(RFC 9113 5.2) nor faster than the socket drains (asyncio's ``pause_writing``).

While the socket's write buffer is full the endpoint also stops reading: a peer that sends
PINGs or SETTINGS and never reads the answers (RFC 9113 10.5: control-frame floods) fills
only the kernel's buffers, never this process's memory.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar, cast

from h2.connection import H2Connection
from h2.events import Event, RemoteSettingsChanged, StreamReset, WindowUpdated
from h2.exceptions import ProtocolError

_T = TypeVar("_T")


class StreamGone(ConnectionError):
    """The stream (or its whole connection) ended before everything was sent."""


class Endpoint(asyncio.Protocol):
    """An ``asyncio.Protocol`` around an ``H2Connection``: subclasses handle the events."""

    def __init__(self, conn: H2Connection) -> None:
        self.conn = conn
        self.transport: asyncio.Transport | None = None
        self._writable: asyncio.Event = asyncio.Event()
        self._writable.set()
        # Senders waiting for a window: one event per stream, woken by WINDOW_UPDATE or SETTINGS.
        self._window_waiters: dict[int, asyncio.Event] = {}
        self._ended: set[int] = set()  # streams reset or closed while a sender may wait on them

    # -- the socket

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio's classes

    def connection_lost(self, exc: BaseException | None) -> None:
        self.transport = None
        self._writable.set()
        for event in self._window_waiters.values():
            event.set()

    def pause_writing(self) -> None:
        self._writable.clear()
        if self.transport is not None:
            self.transport.pause_reading()  # RFC 9113 10.5: no reading while the answers pile up

    def resume_writing(self) -> None:
        self._writable.set()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def flush(self) -> None:
        """Write what ``h2`` has queued (frames, acknowledgements, window updates)."""
        data = self.conn.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    async def drain(self) -> None:
        await self._writable.wait()
        if self.transport is None:
            raise StreamGone("the connection closed")

    # -- windows

    def note_windows(self, event: Event) -> None:
        """Wake the senders an event concerns: a window opened, or their stream ended."""
        if isinstance(event, WindowUpdated):
            if event.stream_id == 0:
                self._wake_all()
            elif (waiter := self._window_waiters.get(event.stream_id)) is not None:
                waiter.set()
        elif isinstance(event, RemoteSettingsChanged):
            self._wake_all()  # SETTINGS_INITIAL_WINDOW_SIZE changes every stream's window
        elif isinstance(event, StreamReset):
            self.stream_ended(event.stream_id)

    def stream_ended(self, stream_id: int) -> None:
        self._ended.add(stream_id)
        if (waiter := self._window_waiters.get(stream_id)) is not None:
            waiter.set()

    def forget(self, stream_id: int) -> None:
        """The stream's sender is done: drop what was kept for it."""
        self._ended.discard(stream_id)
        self._window_waiters.pop(stream_id, None)

    def _wake_all(self) -> None:
        for waiter in self._window_waiters.values():
            waiter.set()

    async def send_data(self, stream_id: int, data: bytes | bytearray | memoryview, *, end_stream: bool = False
                        ) -> None:
        """Send ``data`` on a stream as the windows open; raises ``StreamGone`` if it ends first."""
        view = memoryview(data)
        while True:
            self._check_open(stream_id)
            if not view:
                if end_stream:
                    self._guarded(self.conn.end_stream, stream_id)
                    self.flush()
                return
            window = self._guarded(self.conn.local_flow_control_window, stream_id)
            size = min(window, self.conn.max_outbound_frame_size, len(view))
            if size <= 0:
                await self._wait_window(stream_id)
                continue
            last = end_stream and size == len(view)
            self._guarded(self.conn.send_data, stream_id, view[:size].tobytes(), end_stream=last)
            self.flush()
            view = view[size:]
            if last:
                return
            await self.drain()

    def send_headers(self, stream_id: int, headers: list[tuple[bytes, bytes]], *, end_stream: bool = False) -> None:
        self._check_open(stream_id)
        self._guarded(self.conn.send_headers, stream_id, headers, end_stream=end_stream)
        self.flush()

    def reset(self, stream_id: int, error_code: int) -> None:
        """RST_STREAM, unless the stream is already closed (then there is nothing to stop)."""
        if stream_id in self._ended or self.transport is None:
            return
        self.stream_ended(stream_id)
        try:
            self.conn.reset_stream(stream_id, error_code)
        except ProtocolError:  # closed meanwhile (StreamClosedError is one)
            return
        self.flush()

    @staticmethod
    def _guarded(call: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """``h2`` refusing to send (the stream closed, the connection going away) as ``StreamGone``."""
        try:
            return call(*args, **kwargs)
        except ProtocolError as exc:
            raise StreamGone(str(exc)) from exc

    def _check_open(self, stream_id: int) -> None:
        if self.transport is None or stream_id in self._ended:
            raise StreamGone(f"stream {stream_id} ended")

    async def _wait_window(self, stream_id: int) -> None:
        waiter = self._window_waiters.get(stream_id)
        if waiter is None:
            waiter = self._window_waiters[stream_id] = asyncio.Event()
        waiter.clear()
        await waiter.wait()

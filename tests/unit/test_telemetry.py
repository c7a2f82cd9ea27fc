"""Log output: the sink's batching."""

from __future__ import annotations

import asyncio
import datetime
import os
import re

from ztproxy.telemetry import LogSink, _utc_now_iso


def _read_all(fd: int) -> bytes:
    os.set_blocking(fd, False)
    try:
        return os.read(fd, 1 << 20)
    except BlockingIOError:
        return b""


def test_unbatched_sink_writes_every_line_at_once() -> None:
    read_fd, write_fd = os.pipe()
    sink = LogSink(write_fd)
    sink.write(b'{"event": "a"}\n')
    sink.flush()
    assert _read_all(read_fd) == b'{"event": "a"}\n'
    os.close(read_fd)
    os.close(write_fd)


async def test_batched_sink_holds_lines_until_the_interval_and_drains_on_exit() -> None:
    read_fd, write_fd = os.pipe()
    sink = LogSink(write_fd)
    async with sink.batching(0.2):
        sink.write(b"one\n")
        sink.flush()  # structlog calls this after every event: no write while batching
        assert _read_all(read_fd) == b""
        await asyncio.sleep(0.35)
        assert _read_all(read_fd) == b"one\n"
        sink.write(b"two\n")
    # Leaving the block (shutdown) writes what is left: nothing is lost on a clean stop.
    assert _read_all(read_fd) == b"two\n"
    sink.write(b"three\n")
    sink.flush()
    assert _read_all(read_fd) == b"three\n"
    os.close(read_fd)
    os.close(write_fd)


def test_access_timestamp_is_iso_utc_and_current() -> None:
    stamp = _utc_now_iso()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", stamp)
    parsed = datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    assert abs((datetime.datetime.now(datetime.UTC) - parsed).total_seconds()) < 2


def test_drain_writes_whole_lines_in_atomic_pieces() -> None:
    import select

    read_fd, write_fd = os.pipe()
    writes: list[int] = []
    sink = LogSink(write_fd)
    real_write = os.write

    def counting_write(fd: int, data: bytes | memoryview) -> int:
        writes.append(len(data))
        return real_write(fd, data)

    lines = [b'{"n": %d, "pad": "%s"}\n' % (index, b"x" * (index % 200)) for index in range(100)]
    huge = b'{"huge": "' + b"y" * (select.PIPE_BUF * 2) + b'"}\n'
    for line in [*lines[:50], huge, *lines[50:]]:
        sink.write(line)
    os.write, saved = counting_write, os.write  # type: ignore[assignment]
    try:
        sink.drain()
    finally:
        os.write = saved
    received = b""
    os.set_blocking(read_fd, False)
    while True:
        try:
            chunk = os.read(read_fd, 1 << 16)
        except BlockingIOError:
            break
        if not chunk:
            break
        received += chunk
    assert received == b"".join([*lines[:50], huge, *lines[50:]])
    assert all(size <= select.PIPE_BUF for size in writes if size != len(huge))
    assert len(writes) < 20  # batched, not one write per line
    os.close(read_fd)
    os.close(write_fd)


def test_emit_writes_at_once_unless_batching() -> None:
    read_fd, write_fd = os.pipe()
    sink = LogSink(write_fd)
    sink.emit(b"one\n")
    assert _read_all(read_fd) == b"one\n"
    os.close(read_fd)
    os.close(write_fd)

"""Log output: the sink's batching, and the access line's format (rendered from remembered pieces)."""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ztproxy import telemetry
from ztproxy.telemetry import LogSink, _utc_now_iso, access_fields, access_line


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


# --- the access line, rendered from remembered pieces ---------------------------------------------

ACCESS_KEYS = ["request_id", "client", "method", "host", "path", "route", "decision", "status", "bytes",
               "duration_ms", "event", "level", "timestamp"]
TEXT = st.text(max_size=24)  # quotes, backslashes, control characters, any code point
WHO = st.tuples(st.none() | TEXT, TEXT, TEXT, st.none() | TEXT,
                st.none() | st.sampled_from(["allow", "deny", "step-up"]))
TRACE = st.none() | st.tuples(st.from_regex(r"[0-9a-f]{32}", fullmatch=True),
                              st.from_regex(r"[0-9a-f]{16}", fullmatch=True))


def generic_line(fields: dict[str, Any], stamp: str) -> bytes:
    """What the renderer of every other event (``_event_as_json_line``) writes for these fields."""
    read_fd, write_fd = os.pipe()
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(telemetry, "LOG_SINK", LogSink(write_fd))
            patch.setattr(telemetry, "_utc_now_iso", lambda: stamp)
            telemetry._event_as_json_line("access", dict(fields))
        return _read_all(read_fd)
    finally:
        os.close(read_fd)
        os.close(write_fd)


@given(TEXT, WHO, TEXT, st.integers(100, 599), st.integers(0, 2**40), st.integers(0, 10**9), TRACE)
def test_access_line_is_what_the_json_chain_renders_byte_for_byte(
        request_id: str, who: telemetry.Who, path: str, status: int, sent: int, micros: int,
        trace: telemetry.Trace) -> None:
    duration_ms = micros / 1000
    stamp = _utc_now_iso()
    fields = access_fields(request_id, who, path, status, sent, duration_ms, trace)
    line = access_line(request_id, who, path, status, sent, duration_ms, trace, stamp)
    assert line == generic_line(fields, stamp)
    # Twice: the second time from the remembered pieces.
    assert access_line(request_id, who, path, status, sent, duration_ms, trace, stamp) == line
    keys = list(json.loads(line))
    assert keys == (ACCESS_KEYS if trace is None else [*ACCESS_KEYS[:10], "trace_id", "span_id", *ACCESS_KEYS[10:]])


def test_access_line_of_a_changed_route_host_client_or_decision_shows_the_new_values() -> None:
    stamp = _utc_now_iso()
    before: telemetry.Who = ("192.0.2.1", "GET", "wiki.example", "wiki", "allow")
    assert json.loads(access_line("r1", before, "/a", 200, 10, 1.5, None, stamp))["route"] == "wiki"
    # A reload renames the route, the policy now denies, the client moved, another host: each is a new key.
    for changed in [("192.0.2.1", "GET", "wiki.example", "wiki-v2", "allow"),
                    ("192.0.2.1", "GET", "wiki.example", "wiki", "deny"),
                    ("192.0.2.9", "GET", "wiki.example", "wiki", "allow"),
                    ("192.0.2.1", "GET", "docs.example", "wiki", "allow"),
                    ("192.0.2.1", "POST", "wiki.example", "wiki", "allow"),
                    (None, "GET", "", None, None)]:
        event = json.loads(access_line("r2", changed, "/b", 403, 20, 2.5, None, stamp))
        assert [event[key] for key in ("client", "method", "host", "route", "decision")] == list(changed)
        assert (event["request_id"], event["path"], event["status"], event["bytes"], event["duration_ms"]) == \
            ("r2", "/b", 403, 20, 2.5)
    again = json.loads(access_line("r3", before, "/c", 200, 30, 3.5, None, stamp))
    assert [again[key] for key in ("client", "method", "host", "route", "decision")] == list(before)


def test_remembered_pieces_of_the_access_line_are_bounded() -> None:
    stamp = _utc_now_iso()
    for index in range(telemetry._WHO_LIMIT * 2 + 7):
        who: telemetry.Who = (f"198.51.{index // 256}.{index % 256}", "GET", "wiki.example", "wiki", "allow")
        assert json.loads(access_line("r", who, "/", 200, 1, 0.1, None, stamp))["client"] == who[0]
        assert len(telemetry._rendered_who) <= telemetry._WHO_LIMIT


def test_emit_writes_at_once_unless_batching() -> None:
    read_fd, write_fd = os.pipe()
    sink = LogSink(write_fd)
    sink.emit(b"one\n")
    assert _read_all(read_fd) == b"one\n"
    os.close(read_fd)
    os.close(write_fd)

"""The per-request work every spike server does, so that only the server core differs.

What a signed-in request costs ztproxy besides its server core, in small: the session
cookie looked up in a per-worker cache, the request's headers filtered (hop-by-hop names,
``x-ztproxy-*`` under any spelling), the identity headers and a ~650-character assertion
added, ``X-Forwarded-For``; the upstream reached through ztproxy's own upstream client
(``ztproxy.upstream_client``, pooled keep-alive connections, llhttp); the answer's headers
filtered, a request id added; one JSON access line per request, written in batches.

Not ztproxy: a spike, to compare server cores (bench/README.md, "Data-plane spike").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Coroutine, Iterable
from typing import Any
from urllib.parse import urlsplit

from ztproxy.upstream_client import Origin, UpstreamError, UpstreamPool

SESSION_COOKIE = "ztproxy_session"
SESSION_TOKEN = os.environ.get("SPIKE_SESSION", "spike-session-0123456789abcdef")
# RFC 9110 7.6.1: connection-specific fields are not forwarded; Host is the upstream's.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
                        "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade", "host",
                        "content-length"})
IDENTITY = [("X-Ztproxy-User", "alice"), ("X-Ztproxy-Email", "alice@corp.example"),
            ("X-Ztproxy-Groups", "employees"), ("X-Ztproxy-Jwt-Assertion", "e" * 648)]
SESSIONS = {SESSION_TOKEN: IDENTITY}  # the per-worker session cache, hit on every request
LOG_EVERY = 0.1  # seconds between two writes of the access lines


class Forwarder:
    """One per worker: the upstream pool and the access-line buffer."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.origin = Origin(parts.scheme, parts.hostname or "127.0.0.1", parts.port or 80)
        self.authority = parts.netloc
        self.pool = UpstreamPool()
        self.lines: list[str] = []
        self.flushed = time.monotonic()
        self.sink = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 - the worker's lifetime

    async def handle(self, method: str, target: str, headers: Iterable[tuple[str, str]], client: str,
                     body: bytes | None) -> tuple[int, list[tuple[str, str]], bytes]:
        """(status, headers, body) of the answer to one request."""
        forwarded: list[tuple[str, str]] = [("Host", self.authority)]
        cookie = ""
        for name, value in headers:
            key = name.lower()
            if key in HOP_BY_HOP or key.replace("_", "-").startswith("x-ztproxy"):
                continue
            if key == "cookie":
                cookie = value
                continue
            forwarded.append((name, value))
        identity = SESSIONS.get(_session_of(cookie))
        if identity is None:
            return 401, [("Content-Type", "text/plain")], b"sign in first\n"
        forwarded += identity
        forwarded.append(("X-Forwarded-For", client))
        if body:
            forwarded.append(("Content-Length", str(len(body))))
        try:
            async with await self.pool.request(self.origin, method, target, forwarded,
                                               None if not body else _once(body), read_timeout=30) as answer:
                content = await answer.read()
                status, raw = answer.status, answer.raw_headers
        except UpstreamError:
            return 502, [("Content-Type", "text/plain")], b"bad gateway\n"
        out = [(name, value) for name, value in raw if name.lower() not in HOP_BY_HOP]
        request_id = os.urandom(8).hex()
        out.append(("X-Request-Id", request_id))
        self.log(method, target, status, len(content), request_id)
        return status, out, content

    def log(self, method: str, target: str, status: int, size: int, request_id: str) -> None:
        self.lines.append(json.dumps({"event": "access", "method": method, "path": target, "status": status,
                                      "bytes": size, "request_id": request_id, "user": "alice"}))
        now = time.monotonic()
        if now - self.flushed >= LOG_EVERY:
            self.sink.write("\n".join(self.lines) + "\n")
            self.lines.clear()
            self.flushed = now


async def _once(body: bytes) -> Any:
    yield body


def _session_of(cookie: str) -> str:
    for part in cookie.split(";"):
        name, _, value = part.strip().partition("=")
        if name == SESSION_COOKIE:
            return value
    return ""


def parse_listen_args() -> tuple[str, int, str, int]:
    """``--listen HOST:PORT --upstream URL [--workers N]``: (host, port, upstream, workers)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    return host, int(port), args.upstream, args.workers


def run_workers(serve: Callable[[], Coroutine[Any, Any, None]], workers: int) -> None:
    """``workers`` processes each running ``serve()`` on uvloop (sharing the port: SO_REUSEPORT)."""
    context = multiprocessing.get_context("fork")
    children = [context.Process(target=_worker, args=(serve,)) for _ in range(max(1, workers))]
    for child in children:
        child.start()
    signals = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    while all(child.is_alive() for child in children):
        if signal.sigtimedwait(signals, 0.5) is not None:
            break
    for child in children:
        if child.is_alive():
            child.terminate()
    for child in children:
        child.join(5)


def _worker(serve: Callable[[], Coroutine[Any, Any, None]]) -> None:
    import uvloop

    uvloop.run(serve())


async def until_stopped() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()

"""At SIGTERM no connection waits for the drain (issue 12, point 8).

A connection that reaches ztproxy around its SIGTERM gets a complete answer, or is
refused, reset or closed at once; none is left open and unanswered while the requests
in flight finish. The race this guards against: a connection the event loop accepted
just as the drain closed the listener was kept, its request ignored, and closed only
when ``shutdown_grace`` ran out (``ztproxy.listener._GuardedRequestHandler.start``).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import uvloop
from aiohttp import web

from tests.conftest import UpstreamFactory
from tests.integration.test_process import StartProcess, _make_cert, process_yaml
from ztproxy.config import load_text
from ztproxy.config.schema import Config
from ztproxy.listener import ProxyRunner, bind_socket

pytestmark = pytest.mark.integration

IN_FLIGHT = 4  # slow requests the drain waits for
SLOW_UPSTREAM = 4.0  # how long each takes; SIGTERM comes once all are in flight
BEFORE = 0.3  # new connections start this long before SIGTERM...
AFTER = 1.0  # ...and keep starting this long after it
SPACING = 0.001  # a new connection every millisecond or so
SEND_DELAYS = (0.0, 0.005, 0.01, 0.02)  # clients that take a moment to send their request
CLIENT_CAP = 20.0  # a client gives up here: longer than shutdown_grace (10 s)
REQUEST = b"GET /new HTTP/1.1\r\nHost: ztproxy\r\nConnection: close\r\n\r\n"
ANSWER = b"ok\n"


@dataclass
class Attempt:
    started: float
    ended: float
    outcome: str  # answered, refused, reset, closed (no answer), hung (CLIENT_CAP ran out)


def _runner_config(grace: float) -> Config:
    return load_text(f"server: {{listen: '127.0.0.1:0', shutdown_grace: {grace:.0f}s}}\nroutes:\n"
                     "  - {name: a, upstream: 'http://127.0.0.1:1', allow: [{public: true}]}\n")


def _complete(data: bytes) -> bool:
    head, _, body = data.partition(b"\r\n\r\n")
    return head.startswith(b"HTTP/1.1 200 ") and f"content-length: {len(body)}".encode() in head.lower() \
        and body == ANSWER


async def _attempt(port: int, send_delay: float) -> Attempt:
    started = time.monotonic()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except ConnectionRefusedError:
        return Attempt(started, time.monotonic(), "refused")
    except ConnectionResetError:  # the handshake met a listener closing under it (SO_REUSEPORT): reset at once
        return Attempt(started, time.monotonic(), "reset")
    try:
        await asyncio.sleep(send_delay)
        writer.write(REQUEST)
        await writer.drain()
        async with asyncio.timeout(CLIENT_CAP):
            data = await reader.read()  # to EOF: the request asked for Connection: close
        outcome = "answered" if _complete(data) else "closed"
    except (ConnectionResetError, BrokenPipeError):
        outcome = "reset"
    except TimeoutError:
        outcome = "hung"
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return Attempt(started, time.monotonic(), outcome)


async def test_connections_across_sigterm_are_answered_or_turned_away_at_once(
        start_upstream: UpstreamFactory, proxy_process: StartProcess) -> None:
    async def upstream_handler(request: web.Request) -> web.StreamResponse:
        if request.path == "/slow":
            await asyncio.sleep(SLOW_UPSTREAM)
            return web.Response(text="finished")
        return web.Response(body=ANSWER)

    upstream = await start_upstream(upstream_handler)
    proxy = proxy_process(process_yaml(upstream.url), "--workers", "2")
    port = urlsplit(proxy.url).port
    assert port is not None

    async def slow() -> tuple[bytes, float]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(REQUEST.replace(b"/new", b"/slow"))
            async with asyncio.timeout(CLIENT_CAP):
                data = await reader.read()
        finally:
            writer.close()
        return data, time.monotonic()

    in_flight = [asyncio.create_task(slow()) for _ in range(IN_FLIGHT)]
    deadline = time.monotonic() + 10
    while sum(r.path == "/slow" for r in upstream.requests) < IN_FLIGHT and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert sum(r.path == "/slow" for r in upstream.requests) == IN_FLIGHT, "the slow requests did not arrive"

    attempts: list[asyncio.Task[Attempt]] = []
    start = time.monotonic()
    sigterm_at: float | None = None
    while (now := time.monotonic()) < start + BEFORE + AFTER:
        if sigterm_at is None and now >= start + BEFORE:
            proxy.signal(signal.SIGTERM)
            sigterm_at = now
        attempts.append(asyncio.create_task(_attempt(port, SEND_DELAYS[len(attempts) % len(SEND_DELAYS)])))
        await asyncio.sleep(SPACING)
    assert sigterm_at is not None
    results = await asyncio.gather(*attempts)
    finished = await asyncio.gather(*in_flight)
    exit_status = await asyncio.to_thread(proxy.process.wait, 20)

    first_in_flight_answer = min(at for _, at in finished)
    outcomes = {o: sum(a.outcome == o for a in results) for o in ("answered", "refused", "reset", "closed", "hung")}
    waited = [a for a in results if a.outcome != "answered" and a.ended >= first_in_flight_answer]
    print(f"{len(results)} connections around SIGTERM: {outcomes}; in-flight answered "
          f"{first_in_flight_answer - sigterm_at:.2f}s after SIGTERM; slowest turned away "
          f"{max((a.ended - a.started for a in results if a.outcome != 'answered'), default=0):.2f}s")
    assert exit_status == 0
    assert all(data.startswith(b"HTTP/1.1 200 ") and data.endswith(b"finished") for data, _ in finished)
    # The drain waited for the slow requests; nothing else waited with them.
    assert not waited, [(round(a.started - sigterm_at, 3), a.outcome, round(a.ended - a.started, 2))
                        for a in waited]
    # The connections spanned the close of the listeners: some were served, some turned away.
    assert outcomes["answered"] and outcomes["refused"] + outcomes["reset"] + outcomes["closed"], outcomes


def test_connection_accepted_as_the_listener_closes_is_closed_at_once() -> None:
    """The race, ordered on purpose: the accept's connection_made runs after the drain began.

    uvloop accepts in its poll phase and schedules ``connection_made`` (uvloop
    handles/basetransport.pyx ``_schedule_call_connection_made``); the runner's cleanup is
    already scheduled ahead of it, so its ``pre_shutdown()`` finds the connection before the
    connection's task has begun to wait for a request.
    """
    grace = 30.0

    async def scenario() -> tuple[bytes | None, float]:
        async def hello(request: web.Request) -> web.Response:
            return web.Response(body=ANSWER)

        app = web.Application()
        app.router.add_get("/new", hello)
        runner = ProxyRunner(app, _runner_config(grace))
        await runner.setup()
        listener = bind_socket("127.0.0.1:0", reuse_port=False)
        port = listener.getsockname()[1]
        await web.SockSite(runner, listener).start()
        client = socket.create_connection(("127.0.0.1", port))  # complete, in the accept queue
        try:
            cleanup = asyncio.create_task(runner.cleanup())  # first step ahead of the accept's connection_made
            await asyncio.sleep(0)  # this iteration's poll accepts the client
            started = time.monotonic()
            await asyncio.sleep(0.05)  # the request comes after the drain began
            client.sendall(REQUEST)
            client.settimeout(grace / 3)
            data: bytes | None
            try:
                data = await asyncio.to_thread(client.recv, 4096)
            except ConnectionResetError:
                data = b""
            except TimeoutError:
                data = None  # still open, unanswered
            ended = time.monotonic() - started
            if data is not None:
                await asyncio.wait_for(cleanup, grace / 3)
        finally:
            client.close()
        return data, ended

    data, ended = uvloop.run(scenario())
    # Closed without an answer, well before shutdown_grace (a generous bound for a busy machine).
    assert data == b"" and ended < grace / 6, f"{data!r} after {ended:.1f}s"


def test_tls_connection_whose_handshake_ends_in_the_drain_is_closed_at_once(tmp_path: Path) -> None:
    """A TLS client still shaking hands when the drain began is not served outside it.

    uvloop calls ``connection_made`` when the handshake ends (sslproto.pyx), after the
    drain has listed the connections it waits for: such a connection would be served, or
    kept waiting, while nothing would close it before the process exits.
    """
    ca_path, cert_path, key_path = _make_cert(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert_path, key_path)
    client_tls = ssl.create_default_context(cafile=str(ca_path))
    slow_request = REQUEST.replace(b"/new", b"/slow")

    async def scenario() -> tuple[bytes | str, float, bytes]:
        slow_started = asyncio.Event()

        async def slow(request: web.Request) -> web.Response:
            slow_started.set()
            await asyncio.sleep(SLOW_UPSTREAM)
            return web.Response(text="finished")

        app = web.Application()
        app.router.add_get("/slow", slow)
        runner = ProxyRunner(app, _runner_config(60.0))
        await runner.setup()
        listener = bind_socket("127.0.0.1:0", reuse_port=False)
        port = listener.getsockname()[1]
        await web.SockSite(runner, listener, ssl_context=server_tls).start()
        reader, writer = await asyncio.open_connection("localhost", port, ssl=client_tls)
        late = socket.create_connection(("127.0.0.1", port))  # TCP only: the handshake waits
        try:
            writer.write(slow_request)
            await asyncio.wait_for(slow_started.wait(), 10)
            cleanup = asyncio.create_task(runner.cleanup())
            await asyncio.sleep(0.2)  # the listener is closed; the drain waits for the slow request

            def handshake_and_ask() -> bytes | str:
                late.settimeout(SLOW_UPSTREAM * 2)
                try:
                    with client_tls.wrap_socket(late, server_hostname="localhost") as tls:
                        tls.sendall(slow_request)
                        return tls.recv(4096)
                except OSError as error:  # ssl.SSLError is one: reset, or EOF in the handshake
                    return repr(error)

            started = time.monotonic()
            late_outcome = await asyncio.to_thread(handshake_and_ask)
            ended = time.monotonic() - started
            in_flight = await asyncio.wait_for(reader.read(), 20)
            await asyncio.wait_for(cleanup, 20)
        finally:
            late.close()
            writer.close()
        return late_outcome, ended, in_flight

    late_outcome, ended, in_flight = uvloop.run(scenario())
    assert in_flight.endswith(b"finished")
    # Turned away (EOF, reset or a handshake cut short), not answered: well before the
    # request in flight finished.
    assert late_outcome in (b"",) or isinstance(late_outcome, str), late_outcome
    assert ended < SLOW_UPSTREAM / 2, ended

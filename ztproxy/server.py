"""Lifecycle: listeners, TLS, worker processes, readiness, signals and graceful drain.

One process (``--workers 1``) serves the proxy and the admin listener itself. With
more, a supervisor binds one SO_REUSEPORT socket per worker before starting them (so
a port conflict fails fast and a restarted worker finds its queue waiting), serves
the admin listener, restarts crashed workers, and on SIGTERM drains them all.

SIGTERM (or SIGINT): readiness fails at once, after ``drain_delay`` the listeners
close, in-flight requests get ``shutdown_grace`` to finish, then the process exits 0.

SIGHUP: the config file is read and validated again; a valid one is swapped in without
dropping a connection (``ztproxy.reload``), an invalid one is logged with every issue and
the running one keeps serving. The supervisor validates it once and hands it to each
worker as one more JSON line on the worker's stdin.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import ssl
import sys
import tempfile
from collections.abc import Coroutine
from typing import Any

from aiohttp import web, web_response
from aiohttp.http_exceptions import LineTooLong
from aiohttp.web_protocol import RequestHandler

from ztproxy import metrics, tracing
from ztproxy.admin import WorkerSockets, build_admin_app
from ztproxy.app import build_app
from ztproxy.config.schema import Config
from ztproxy.config.values import split_listen
from ztproxy.errors import BadRequest, HeadersTooLarge, RequestError, UriTooLong
from ztproxy.metrics import serve_exposition
from ztproxy.pages import error_response
from ztproxy.reload import (
    ConfigFollower,
    GeneratedSecrets,
    LiveApp,
    on_sighup,
    reload_on_sighup,
    reread,
    shared_secrets,
    watch_file,
)
from ztproxy.state import Readiness
from ztproxy.telemetry import LOG_SINK, AccessLogger, get_logger

log = get_logger("ztproxy.server")

_REQUEST_TIMEOUT = (b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\n"
                    b"Content-Type: text/plain\r\nContent-Length: 25\r\n\r\nRequest headers too slow\n")
_RESTART_BACKOFF_MAX = 30.0

# aiohttp adds "Server: Python/3.x aiohttp/3.y" to every response that has none
# (StreamResponse._prepare_headers: setdefault(SERVER, SERVER_SOFTWARE), read from this
# module global at each response). Versions tell an attacker which advisories apply: the
# proxy's own responses, and an app's that name no server, say only this. An app's own
# Server header passes as it is.
SERVER_NAME = "ztproxy"
web_response.SERVER_SOFTWARE = SERVER_NAME  # type: ignore[attr-defined]  # not in its __all__

# Where a worker serves its metrics exposition: a socket in the supervisor's private directory.
WORKER_METRICS_ENV = "ZTPROXY_WORKER_METRICS_SOCKET"
_BACKLOG = 1024
# A worker's configuration line on stdin; far above any real configuration.
MAX_CONFIG_LINE = 64 * 1024 * 1024


class _GuardedRequestHandler(RequestHandler):
    """aiohttp's connection handler with a deadline for the first request's headers.

    aiohttp closes idle keep-alive connections itself (``keepalive_timeout``, which also
    bounds a dribbled second request), but waits forever for a first request that
    never completes: that is the slowloris hole closed here. One timer per connection,
    nothing per request: when it fires, a connection that has sent a request is left
    alone. Parser errors are rendered as our pages, 431 or 414 for oversized input.

    At SIGTERM no connection waits for the drain: one the drain has closed before its
    first request is closed at once (``start``), as is one whose TLS handshake ends
    after the drain began (``connection_made``).
    """

    def __init__(self, manager: _ProxyServer, *, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._server = manager
        self._header_timeout = header_timeout
        self._header_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self._server.draining:
            # Not on the list Server.shutdown() waits for, so nothing would ever close it
            # before the process exits: a TLS connection (uvloop calls connection_made when
            # the handshake ends, sslproto.pyx) that was still shaking hands at the drain.
            self.force_close()
            return
        self._header_deadline = self._loop.call_later(self._header_timeout, self._headers_too_slow)

    async def start(self) -> None:
        # The drain's close() (Server.pre_shutdown) stops an idle connection by cancelling
        # its wait for a request; this task may not be waiting yet. uvloop calls
        # connection_made a loop pass after the accept (basetransport.pyx
        # _schedule_call_connection_made) and on Python 3.11 aiohttp starts this task a pass
        # later still (no eager tasks), so a connection accepted as the listener closed
        # reached the drain with nothing to cancel, then waited for a request that
        # data_received drops once closed: unanswered until shutdown_grace (or the 408 of
        # header_timeout). aiohttp's loop tests only _force_close before it waits.
        if self._close and not self._messages:
            self.force_close()
            return
        await super().start()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None
        super().connection_lost(exc)

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        if self._request_count == 0 and self.transport is not None:
            peer = self.peername
            log.info("request_header_timeout", client=peer[0] if isinstance(peer, tuple) else peer)
            self.transport.write(_REQUEST_TIMEOUT)
            self.force_close()

    def handle_error(self, request: Any, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if status >= 500:
            return super().handle_error(request, status, exc, message)
        error: RequestError
        if isinstance(exc, LineTooLong):
            # The parser names the limit it hit: the request line's, or a header field's.
            limit = exc.args[1] if len(exc.args) > 1 else None
            line_limit_hit = limit == self.max_line_size and self.max_line_size != self.max_field_size
            error = UriTooLong() if line_limit_hit else HeadersTooLarge()
        elif "Too many headers" in str(exc):
            error = HeadersTooLarge()
        else:
            error = BadRequest("The request is not valid HTTP.")
        peer = self.peername
        log.info("request_rejected", client=peer[0] if isinstance(peer, tuple) else peer, status=error.status,
                 reason=str(exc)[:200] if exc else message)
        return error_response(error, request_id="-", close=True)


class _ProxyServer(web.Server):
    def __init__(self, *args: Any, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timeout = header_timeout
        self.draining = False

    def pre_shutdown(self) -> None:
        self.draining = True  # the runner has closed the listener: the drain begins
        super().pre_shutdown()

    def __call__(self) -> RequestHandler:
        return _GuardedRequestHandler(self, loop=self._loop, header_timeout=self._header_timeout,
                                      **self._kwargs)


class ProxyRunner(web.AppRunner):
    """An AppRunner whose connections get the header deadline and our error pages."""

    def __init__(self, app: web.Application, config: Config) -> None:
        limits = config.server.limits
        super().__init__(
            app,
            handle_signals=False,
            access_log_class=AccessLogger,
            access_log=logging.getLogger("ztproxy.access") if config.logging.access_log else None,
            shutdown_timeout=config.server.shutdown_grace,
            handler_cancellation=True,  # a client that goes away cancels its upstream request
            keepalive_timeout=limits.keepalive_timeout,
            max_line_size=limits.max_line_bytes,
            max_field_size=limits.max_header_bytes,
            max_headers=limits.max_header_count,
        )
        self._header_timeout = limits.header_timeout

    async def _make_server(self) -> web.Server:
        app = self.app
        loop = asyncio.get_running_loop()
        app._set_loop(loop)
        app.on_startup.freeze()
        await app.startup()
        app.freeze()
        return _ProxyServer(app._handle, request_factory=app._make_request, loop=loop,
                            header_timeout=self._header_timeout, **self._kwargs)


def ssl_context(config: Config) -> ssl.SSLContext | None:
    """The listener's TLS context; with ``client_ca_file`` it asks for a device certificate.

    A client certificate is asked for, never required: without one the request is served
    with no device. One issued by the device CA passes whatever its dates (OpenSSL's
    X509_V_FLAG_NO_CHECK_TIME, which the ssl module has no name for): an expired device
    certificate would otherwise fail the handshake, and its client would get no page at all,
    public routes included, while it presents it. ``ztproxy.posture.client_cert`` checks the
    dates against the request's clock instead and gives no device. One from another CA fails
    the connection (alert unknown_ca): the stdlib offers no verify callback to accept it as
    "no certificate" (tests/integration/posture/test_tls.py shows each case).
    """
    tls = config.server.tls
    if tls is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_3 if tls.min_version == "1.3" else ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(tls.cert_file, tls.key_file)
    context.set_alpn_protocols(["http/1.1"])
    if tls.client_ca_file is not None:
        context.verify_mode = ssl.CERT_OPTIONAL  # RFC 8446 4.3.2: request, don't require
        context.load_verify_locations(tls.client_ca_file)
        context.verify_flags |= 0x200000  # X509_V_FLAG_NO_CHECK_TIME (OpenSSL x509_vfy.h)
    return context


def bind_socket(listen: str, *, reuse_port: bool) -> socket.socket:
    host, port = split_listen(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(_BACKLOG)
    sock.setblocking(False)
    return sock


def _stop_event() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    return stop


async def _start_admin(config: Config, readiness: Readiness,
                       worker_sockets: WorkerSockets | None = None) -> web.AppRunner | None:
    if config.server.admin_listen is None:
        return None
    runner = web.AppRunner(build_admin_app(readiness, config, worker_sockets=worker_sockets),
                           handle_signals=False, access_log=None)
    await runner.setup()
    host, port = split_listen(config.server.admin_listen)
    await web.TCPSite(runner, host, port).start()
    return runner


async def _serve_proxy(config: Config, sock: socket.socket, readiness: Readiness,
                       stop: asyncio.Event, on_ready: Any = None, follow: ConfigFollower | None = None) -> None:
    async with LOG_SINK.batching(config.logging.flush_interval), tracing.tracing_from_env():
        live = LiveApp(config, build_app)  # after tracing starts: the pipeline is chosen when an app is built
        runner = ProxyRunner(live.front_app(), config)
        await runner.setup()
        await web.SockSite(runner, sock, ssl_context=ssl_context(config), backlog=_BACKLOG).start()
        readiness.ready, readiness.reasons = True, []
        log.info("proxy_listening", listen=config.server.listen, public_url=config.public_url,
                 routes=len(config.routes), pid=os.getpid())
        if on_ready is not None:
            on_ready()
        follower = asyncio.create_task(follow(live)) if follow is not None else None
        await stop.wait()
        if follower is not None:
            follower.cancel()
            await asyncio.gather(follower, return_exceptions=True)
        readiness.ready, readiness.reasons = False, ["draining"]
        server = live.config.server  # as reloaded; shutdown_grace is the runner's, fixed at start
        log.info("draining", grace_s=server.shutdown_grace, drain_delay_s=server.drain_delay)
        await asyncio.sleep(server.drain_delay)
        await runner.cleanup()  # closes the listener, then waits up to shutdown_grace for in-flight requests
        log.info("stopped", pid=os.getpid())


async def serve(config: Config, *, config_path: str | None = None,
                generated: GeneratedSecrets | None = None) -> int:
    """Single process: proxy and admin listener in this event loop; SIGHUP reloads ``config_path``."""
    readiness = Readiness(reasons=["starting"])
    stop = _stop_event()
    sock = bind_socket(config.server.listen, reuse_port=False)
    admin = await _start_admin(config, readiness)
    try:
        await _serve_proxy(config, sock, readiness, stop,
                           follow=reload_on_sighup(config_path, generated or GeneratedSecrets(),
                                                   watch=config.server.watch_config))
    finally:
        if admin is not None:
            await admin.cleanup()
    return 0


async def serve_worker(config: Config, sock: socket.socket, ready_fd: int,
                       updates: asyncio.StreamReader | None = None) -> int:
    """One worker under the supervisor: the proxy on an inherited socket, no admin listener.

    Each line of ``updates`` is a configuration the supervisor has validated, as JSON.
    """
    stop = _stop_event()

    def announce() -> None:
        os.write(ready_fd, b"1")
        os.close(ready_fd)

    async def follow(live: LiveApp) -> None:
        while updates is not None and (line := await updates.readline()):
            try:
                new = Config.model_validate_json(line)
            except ValueError as error:  # the supervisor validated it: only a bug lands here
                log.error("config_reload_failed", issues=[str(error)[:2000]])
                metrics.config_reloaded(False)
                continue
            await live.reload(new)

    async with serve_exposition(os.environ.get(WORKER_METRICS_ENV)):
        await _serve_proxy(config, sock, Readiness(), stop, on_ready=announce, follow=follow)
    return 0


async def _send_line(worker: _Worker, line: bytes) -> None:
    process = worker.process
    if process is None or process.returncode is not None or process.stdin is None:
        return  # a worker starting later reads the newest payload
    with contextlib.suppress(ConnectionError):
        process.stdin.write(line)
        await process.stdin.drain()


class _Worker:
    def __init__(self, index: int, sock: socket.socket) -> None:
        self.index = index
        self.sock = sock
        self.process: asyncio.subprocess.Process | None = None
        self.ready = False


async def supervise(config: Config, workers: int, log_format: str, *, config_path: str | None = None,
                    generated: GeneratedSecrets | None = None) -> int:
    """Several workers sharing the port; the supervisor owns readiness, restarts and reloads."""
    readiness = Readiness(reasons=["starting"])
    stop = _stop_event()
    pool = [_Worker(i, bind_socket(config.server.listen, reuse_port=True)) for i in range(workers)]
    metrics_dir = tempfile.mkdtemp(prefix="ztproxy-metrics-")  # mode 0700: this user's processes only

    def metrics_socket(worker: _Worker) -> str:
        return os.path.join(metrics_dir, f"worker-{worker.index}.sock")

    admin = await _start_admin(config, readiness,
                               worker_sockets=lambda: [(str(w.index), metrics_socket(w)) for w in pool if w.ready])
    # The configuration a worker starts with: the latest valid one, so a restarted worker has it too.
    payload = config.model_dump_json().encode() + b"\n"

    def update_readiness() -> None:
        missing = [str(w.index) for w in pool if not w.ready]
        readiness.ready = not missing and not stop.is_set()
        readiness.reasons = [] if readiness.ready else (
            ["draining"] if stop.is_set() else [f"worker {i} not ready" for i in missing])

    async def run_worker(worker: _Worker) -> None:
        backoff = 0.5
        while not stop.is_set():
            read_fd, write_fd = os.pipe()
            worker.ready = False
            worker.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "ztproxy.worker", "--socket-fd", str(worker.sock.fileno()),
                "--ready-fd", str(write_fd), "--log-format", log_format,
                stdin=asyncio.subprocess.PIPE, pass_fds=(worker.sock.fileno(), write_fd),
                env={**os.environ, WORKER_METRICS_ENV: metrics_socket(worker)})
            os.close(write_fd)
            assert worker.process.stdin is not None
            worker.process.stdin.write(payload)  # stays open: reloads follow, one line each
            started = asyncio.get_running_loop().time()
            ready_task = asyncio.create_task(asyncio.to_thread(os.read, read_fd, 1))
            exit_task = asyncio.create_task(worker.process.wait())
            done, _ = await asyncio.wait((ready_task, exit_task), return_when=asyncio.FIRST_COMPLETED)
            if ready_task in done and ready_task.result() == b"1":
                worker.ready = True
                update_readiness()
            code = await exit_task
            worker.process.stdin.close()
            await asyncio.gather(ready_task, return_exceptions=True)
            os.close(read_fd)
            worker.ready = False
            update_readiness()
            if stop.is_set():
                return
            log.error("worker_exited", worker=worker.index, pid=worker.process.pid, exit_code=code)
            lived = asyncio.get_running_loop().time() - started
            backoff = 0.5 if lived > _RESTART_BACKOFF_MAX else min(backoff * 2, _RESTART_BACKOFF_MAX)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=backoff)

    hangup = on_sighup()  # before the first worker: a SIGHUP from now on reloads, never ends the supervisor

    async def broadcast_reloads() -> None:
        nonlocal payload, config
        while True:
            await hangup.wait()
            hangup.clear()
            log.info("config_reload_requested", config=config_path)
            new = await reread(config_path, generated or GeneratedSecrets(), workers=workers)
            if new is None:
                continue  # reported once, here; the workers keep serving what they have
            config, payload = new, new.model_dump_json().encode() + b"\n"
            await asyncio.gather(*(_send_line(worker, payload) for worker in pool))
            log.info("config_reload_sent", workers=workers)

    tasks = [asyncio.create_task(run_worker(w)) for w in pool]
    reloader = asyncio.create_task(broadcast_reloads())
    watcher = asyncio.create_task(watch_file(config_path, hangup)) \
        if config.server.watch_config and config_path else None
    log.info("supervisor_started", workers=workers, listen=config.server.listen, pid=os.getpid())
    await stop.wait()
    for task in (reloader, watcher):
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    update_readiness()
    log.info("supervisor_draining", workers=workers)
    for worker in pool:
        if worker.process is not None and worker.process.returncode is None:
            worker.process.send_signal(signal.SIGTERM)
        # The workers hold the listening sockets while they drain; once they close them, the
        # kernel must refuse new connections, not queue them on our copies until we exit.
        worker.sock.close()
    deadline = config.server.drain_delay + config.server.shutdown_grace + 5.0
    await asyncio.wait(tasks, timeout=deadline)
    for worker in pool:
        if worker.process is not None and worker.process.returncode is None:
            log.warning("worker_killed", worker=worker.index, pid=worker.process.pid)
            worker.process.kill()
    await asyncio.gather(*tasks, return_exceptions=True)
    for worker in pool:
        worker.sock.close()
    if admin is not None:
        await admin.cleanup()
    shutil.rmtree(metrics_dir, ignore_errors=True)
    log.info("stopped", pid=os.getpid())
    return 0


def run_loop(main: Coroutine[Any, Any, int]) -> int:
    """Run on uvloop when it is installed (it is a dependency on Linux and macOS)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - platforms without uvloop
        return asyncio.run(main)
    return uvloop.run(main)


def run(config: Config, *, workers: int = 1, log_format: str = "json", config_path: str | None = None) -> int:
    """Serve ``config``; SIGHUP reloads it from ``config_path`` (the file it was loaded from)."""
    with shared_secrets() as generated:
        config = generated.fill(config)
        if workers <= 1:
            return run_loop(serve(config, config_path=config_path, generated=generated))
        return run_loop(supervise(config, workers, log_format, config_path=config_path, generated=generated))

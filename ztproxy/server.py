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
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Coroutine
from typing import Any

from aiohttp import web

from ztproxy import metrics, tracing
from ztproxy.admin import WorkerSockets, build_admin_app
from ztproxy.app import build_app
from ztproxy.config.schema import Config
from ztproxy.config.values import split_listen
from ztproxy.listener import bind_socket, start_listener
from ztproxy.metrics import serve_exposition
from ztproxy.reload import (
    ConfigFollower,
    LiveApp,
    on_sighup,
    reload_on_sighup,
    reread,
    watch_file,
)
from ztproxy.run_secrets import GeneratedSecrets, shared_secrets
from ztproxy.state import Readiness
from ztproxy.telemetry import LOG_SINK, get_logger

log = get_logger("ztproxy.server")

_RESTART_BACKOFF_MAX = 30.0

# Where a worker serves its metrics exposition: a socket in the supervisor's private directory.
WORKER_METRICS_ENV = "ZTPROXY_WORKER_METRICS_SOCKET"
# A worker's configuration line on stdin; far above any real configuration.
MAX_CONFIG_LINE = 64 * 1024 * 1024


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
        runner = await start_listener(live.front_app(), config, sock)
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

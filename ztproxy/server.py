"""Lifecycle: serving a configuration in one process or in workers; readiness, signals, drain.

One process (``--workers 1``) serves the proxy (on ``ztproxy.listener``) and the admin
listener itself. With more, the supervisor (``ztproxy.supervisor``) runs the workers, each
serving the proxy (``serve_worker``), and this process serves the admin listener.

SIGTERM (or SIGINT): readiness fails at once, after ``drain_delay`` the listeners
close, in-flight requests get ``shutdown_grace`` to finish, then the process exits 0.

SIGHUP: the config file is read and validated again; a valid one is swapped in without
dropping a connection (``ztproxy.reload``), an invalid one is logged with every issue and
the running one keeps serving. The supervisor validates it once and hands it to each
worker as one more JSON line on the worker's stdin.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from collections.abc import Callable, Coroutine
from typing import Any

from aiohttp import web

from ztproxy import metrics, tracing
from ztproxy.admin import WorkerSockets, build_admin_app
from ztproxy.app import build_app
from ztproxy.config.schema import Config
from ztproxy.config.values import split_listen
from ztproxy.listener import bind_socket, start_listener
from ztproxy.metrics import serve_exposition
from ztproxy.reload import ConfigFollower, LiveApp, reload_on_sighup
from ztproxy.run_secrets import GeneratedSecrets, shared_secrets
from ztproxy.state import Readiness
from ztproxy.supervisor import WORKER_METRICS_ENV, Supervisor
from ztproxy.telemetry import LOG_SINK, get_logger

log = get_logger("ztproxy.server")

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


async def _serve_proxy(config: Config, sock: socket.socket, readiness: Readiness, stop: asyncio.Event,
                       on_ready: Callable[[], None] | None = None, follow: ConfigFollower | None = None,
                       auth_sock: socket.socket | None = None) -> None:
    async with LOG_SINK.batching(config.logging.flush_interval), tracing.tracing_from_env():
        live = LiveApp(config, build_app)  # after tracing starts: the pipeline is chosen when an app is built
        runner = await start_listener(live.front_app(), config, sock)
        runners = [runner]
        if auth_sock is not None:  # server.auth_listen: forward-auth decisions apart
            runners.append(await start_listener(live.decisions_app(), config, auth_sock))
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
        # Each closes its listener, then waits up to shutdown_grace for its requests in flight;
        # the proxy listener's last, as it owns the app the others serve.
        await asyncio.gather(*(other.cleanup() for other in runners[1:]))
        await runner.cleanup()
        log.info("stopped", pid=os.getpid())


async def serve(config: Config, *, config_path: str | None, generated: GeneratedSecrets) -> int:
    """Single process: proxy and admin listener in this event loop; SIGHUP reloads ``config_path``."""
    readiness = Readiness(reasons=["starting"])
    stop = _stop_event()
    sock = bind_socket(config.server.listen, reuse_port=False)
    auth_listen = config.server.auth_listen
    auth_sock = None if auth_listen is None else bind_socket(auth_listen, reuse_port=False)
    admin = await _start_admin(config, readiness)
    try:
        await _serve_proxy(config, sock, readiness, stop, auth_sock=auth_sock,
                           follow=reload_on_sighup(config_path, generated, watch=config.server.watch_config))
    finally:
        if admin is not None:
            await admin.cleanup()
    return 0


async def serve_worker(config: Config, sock: socket.socket, ready_fd: int,
                       updates: asyncio.StreamReader | None = None, auth_sock: socket.socket | None = None) -> int:
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
        await _serve_proxy(config, sock, Readiness(), stop, on_ready=announce, follow=follow, auth_sock=auth_sock)
    return 0


async def supervise(config: Config, workers: int, log_format: str, *, config_path: str | None,
                    generated: GeneratedSecrets) -> int:
    """Several workers sharing the port (``ztproxy.supervisor``), and the admin listener."""
    stop = _stop_event()
    supervisor = Supervisor(config, workers, log_format, stop, config_path=config_path, generated=generated)
    admin = await _start_admin(config, supervisor.readiness, worker_sockets=supervisor.worker_sockets)
    await supervisor.run()
    if admin is not None:
        await admin.cleanup()
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

"""Configuration reload: one app per configuration, swapped in atomically while requests go on.

The runner serves a small front app whose only handler dispatches each request to the
current *generation*: the app ``app.build_app`` made from one configuration, started
(its cleanup contexts: upstream client, sessions, keys, posture) but never served by a
runner itself. The request is pinned to that generation's app from its first stage to
its last (``match_info.current_app``, what aiohttp does for sub-apps), so every
``request.app[KEY]`` it reads comes from one configuration.

A reload builds and starts the next generation first (a failure keeps the current one),
swaps one reference, then retires the previous generation: once the requests it serves
(WebSockets included) have finished, or ``server.shutdown_grace`` has passed, its
resources close and a full garbage collection frees what it held (see ``_retired``).
Settings of the listener itself can't change without a restart: ``restart_only`` names
those that differ and ``keep_listener`` keeps them as they run.

Where new configurations come from: ``reread`` loads and validates the file again (every
issue logged when it is invalid), ``reload_on_sighup`` does it on each SIGHUP. Secrets a
file leaves out are those generated for the run (``ztproxy.run_secrets``), so a reload
keeps sign-ins and assertion keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel

from ztproxy import metrics
from ztproxy.admin import healthz
from ztproxy.app import PIPELINE, add_catch_all
from ztproxy.config import load
from ztproxy.config.schema import Config
from ztproxy.errors import ConfigError, PathRejected, RouteNotFound
from ztproxy.forward_auth import Kind, endpoint_kind
from ztproxy.listener import start_app
from ztproxy.pages import page_for, secure
from ztproxy.routing import parse_target
from ztproxy.run_secrets import GeneratedSecrets
from ztproxy.state import CONFIG
from ztproxy.telemetry import get_logger

log = get_logger("ztproxy.reload")

# What the listening socket, its parser and the admin listener were set up with.
_LISTENER_SETTINGS: tuple[tuple[str, ...], ...] = (
    ("server", "listen"), ("server", "admin_listen"), ("server", "auth_listen"), ("server", "admin_token"),
    ("server", "tls"), ("server", "http2"), ("workload_identity",),
    ("server", "limits", "max_header_count"), ("server", "limits", "max_line_bytes"),
    ("server", "limits", "header_timeout"), ("server", "limits", "keepalive_timeout"),
    ("server", "shutdown_grace"), ("logging",),
)


_Model = TypeVar("_Model", bound=BaseModel)


def _setting(config: Config, path: tuple[str, ...]) -> Any:
    value: Any = config
    for name in path:
        value = getattr(value, name)
    return value


def restart_only(running: Config, new: Config) -> list[str]:
    """The dotted names of listener settings that differ: they need a restart to change."""
    return [".".join(path) for path in _LISTENER_SETTINGS if _setting(running, path) != _setting(new, path)]


def keep_listener(running: Config, new: Config) -> Config:
    """``new`` with the listener settings ``running`` serves with, so the app says what is in effect."""
    for path in _LISTENER_SETTINGS:
        new = _with_setting(new, path, _setting(running, path))
    return new


def _with_setting(model: _Model, path: tuple[str, ...], value: Any) -> _Model:
    name, *rest = path
    if rest:
        value = _with_setting(getattr(model, name), tuple(rest), value)
    return model.model_copy(update={name: value})


def issue_list(error: ConfigError) -> list[str]:
    return [str(issue) for issue in error.issues]


@dataclass(eq=False)
class Generation:
    """One configuration's started app, and how many requests it is serving now."""

    app: web.Application
    in_flight: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.idle.set()


class LiveApp:
    """The current generation, the dispatcher that serves it, and the swap to the next one."""

    def __init__(self, config: Config, build: Callable[[Config], web.Application]) -> None:
        self._build = build
        self._first = config
        self._current: Generation | None = None
        self._retiring: set[asyncio.Task[None]] = set()
        self._lock = asyncio.Lock()

    @property
    def app(self) -> web.Application:
        """The app of the configuration being served now (started)."""
        if self._current is None:
            raise RuntimeError("no configuration is being served: the front app has not started")
        return self._current.app

    @property
    def config(self) -> Config:
        return self._current.app[CONFIG] if self._current is not None else self._first

    def front_app(self) -> web.Application:
        """The app the runner serves: the dispatcher, and the generations' lifecycle."""
        front = web.Application()
        front[CONFIG] = self._first  # what the runner's own parts (access log) read outside a request
        front.cleanup_ctx.append(self._lifecycle)
        add_catch_all(front, self.dispatch)
        return front

    def decisions_app(self) -> web.Application:
        """The app of ``server.auth_listen``: forward-auth decisions and /healthz, nothing else.

        It serves the generations ``front_app`` starts, so start that one first.
        """
        front = web.Application()
        front[CONFIG] = self._first
        front.router.add_get("/healthz", healthz)
        add_catch_all(front, self._decide)
        return front

    async def _decide(self, request: web.Request) -> web.StreamResponse:
        try:
            kind = endpoint_kind(parse_target(request.raw_path).path)  # canonical, as intake will judge it
        except PathRejected:
            kind = None
        if kind not in (Kind.AUTH, Kind.DENIED):
            return secure(page_for(request, RouteNotFound("This listener answers forward-auth questions only.")))
        return await self.dispatch(request)

    async def _lifecycle(self, _front: web.Application) -> AsyncIterator[None]:
        self._current = await self._start(self._first)
        try:
            yield
        finally:
            await self.close()

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        generation = self._current
        assert generation is not None, "the front app serves only between startup and cleanup"
        # One request, one configuration: every request.app[KEY] reads this generation's app.
        request.match_info.current_app = generation.app
        generation.in_flight += 1
        generation.idle.clear()
        try:
            return await generation.app[PIPELINE](request)
        finally:
            generation.in_flight -= 1
            if generation.in_flight == 0:
                generation.idle.set()

    async def reload(self, config: Config) -> bool:
        """Swap ``config`` in; False (logged, the current one still serving) if it can't start."""
        async with self._lock:
            previous = self._current
            if previous is None:
                return False
            running = previous.app[CONFIG]
            restart = restart_only(running, config)
            if restart:
                log.warning("config_reload_needs_restart", settings=restart,
                            hint="these settings keep their running values until ztproxy restarts")
                config = keep_listener(running, config)
            try:
                generation = await self._start(config)
            except Exception as error:  # a provider that can't be built, unreadable keys...
                issues = issue_list(error) if isinstance(error, ConfigError) else [f"{type(error).__name__}: {error}"]
                log.error("config_reload_failed", issues=issues, error_count=len(issues))
                metrics.config_reloaded(False)
                return False
            self._current = generation  # the swap: requests from now on see the new configuration
            task = asyncio.create_task(self._retire(previous, config.server.shutdown_grace))
            self._retiring.add(task)
            task.add_done_callback(self._retired)
        log.info("config_reloaded", routes=len(config.routes))
        metrics.config_reloaded(True)
        return True

    async def settled(self) -> None:
        """Wait until every retired generation has closed and been collected."""
        while self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)
            await asyncio.sleep(0)  # their done callbacks (the collection) run next

    async def close(self) -> None:
        """Stop every generation: the current one and any still retiring."""
        for task in list(self._retiring):
            task.cancel()
        await asyncio.gather(*self._retiring, return_exceptions=True)
        current, self._current = self._current, None
        if current is not None:
            await current.app.cleanup()

    async def _start(self, config: Config) -> Generation:
        app = self._build(config)
        await start_app(app)
        return Generation(app)

    def _retired(self, task: asyncio.Task[None]) -> None:
        self._retiring.discard(task)
        # A generation is a web of reference cycles (the app and its cleanup contexts, aiohttp
        # and redis-py clients), so only the cyclic collector frees it, and a long-running
        # process seldom makes the full pass that reaches objects that old: retired
        # generations piled up, a Redis Cluster client's slot table (~1 MiB) each. Collect
        # now, when the task has let go of it: one pause per reload, memory stays flat.
        gc.collect()

    async def _retire(self, generation: Generation, grace: float) -> None:
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    await generation.idle.wait()
            if generation.in_flight:
                log.warning("config_retired_with_requests", in_flight=generation.in_flight, grace_s=grace)
        finally:
            # Cancelled (shutdown): close anyway, the runner has waited for in-flight requests.
            await generation.app.cleanup()


WATCH_INTERVAL = 1.0  # seconds between checks of the config file (server.watch_config)

# Follows configuration changes for a running proxy (SIGHUP, or the supervisor's lines) until cancelled.
ConfigFollower = Callable[[LiveApp], Coroutine[Any, Any, None]]


def on_sighup() -> asyncio.Event:
    hangup = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, hangup.set)
    return hangup


async def reread(config_path: str | None, generated: GeneratedSecrets, *, workers: int = 1) -> Config | None:
    """The config file read and validated again; None, logged with every issue, when it is unusable."""
    if config_path is None:
        log.error("config_reload_failed", issues=["ztproxy was started without a config file path"], error_count=1)
        metrics.config_reloaded(False)
        return None

    def read() -> Config:
        config = generated.fill(load(config_path))
        if workers > 1 and config.identity_providers and config.sessions.store == "memory":
            raise ValueError(f"sessions.store is memory, which one process alone can see: it can't serve "
                             f"{workers} workers")
        return config

    try:
        return await asyncio.to_thread(read)  # file reads and key checks: off the event loop
    except ConfigError as error:
        issues = issue_list(error)
    except Exception as error:  # bad key files, a store the workers can't share...
        issues = [f"{type(error).__name__}: {error}"]
    log.error("config_reload_failed", config=config_path, issues=issues, error_count=len(issues))
    metrics.config_reloaded(False)
    return None


def reload_on_sighup(config_path: str | None, generated: GeneratedSecrets, *,
                     watch: bool = False) -> ConfigFollower:
    """Reloads ``config_path`` on each SIGHUP, from now on: one during startup waits for the proxy.

    With ``watch``, a change of the file counts as a SIGHUP. The handler stays when the
    follower stops (draining): a late SIGHUP is ignored, not fatal.
    """
    hangup = on_sighup()

    async def follow(live: LiveApp) -> None:
        watcher = asyncio.create_task(watch_file(config_path, hangup)) if watch and config_path else None
        try:
            while True:
                await hangup.wait()
                hangup.clear()  # SIGHUPs during a reload make one more reload, after it
                log.info("config_reload_requested", config=config_path)
                config = await reread(config_path, generated)
                if config is not None:
                    await live.reload(config)
        finally:
            if watcher is not None:
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)

    return follow


async def watch_file(path: str, changed: asyncio.Event, interval: float = WATCH_INTERVAL) -> None:
    """Set ``changed`` whenever the file at ``path`` is rewritten or replaced, until cancelled.

    Polled, so it works on every filesystem; ``stat`` follows symlinks, so the swap of a
    Kubernetes ConfigMap's ``..data`` link counts as a change.
    """
    def stamp() -> tuple[int, int, int] | None:
        try:
            info = os.stat(path)
        except OSError:
            return None  # being replaced: the next poll sees the new file
        return info.st_mtime_ns, info.st_size, info.st_ino

    last = await asyncio.to_thread(stamp)
    while True:
        await asyncio.sleep(interval)
        now = await asyncio.to_thread(stamp)
        if now is not None and now != last:
            last = now
            log.info("config_file_changed", config=path)
            changed.set()

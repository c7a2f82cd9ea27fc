"""The supervisor of ``ztproxy run --workers N``: worker processes sharing the port.

It binds one SO_REUSEPORT socket per worker before starting any (so a port conflict
fails fast and a restarted worker finds its queue waiting), starts each worker
(``python -m ztproxy.worker``) and restarts it when it exits, with a backoff that grows
while it keeps failing. Readiness is every worker's. On SIGHUP it reads the config file
again, once, and sends a valid one to each worker as one more JSON line on its stdin; on
SIGTERM it drains the workers, and kills those still running after the grace.
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

from ztproxy.config.schema import Config
from ztproxy.listener import bind_socket
from ztproxy.reload import on_sighup, reread, watch_file
from ztproxy.run_secrets import GeneratedSecrets
from ztproxy.state import Readiness
from ztproxy.telemetry import get_logger

log = get_logger("ztproxy.supervisor")

# Where a worker serves its metrics exposition: a socket in the supervisor's private directory.
WORKER_METRICS_ENV = "ZTPROXY_WORKER_METRICS_SOCKET"
_RESTART_BACKOFF_MAX = 30.0


def _config_line(config: Config) -> bytes:
    return config.model_dump_json().encode() + b"\n"


class _Worker:
    def __init__(self, index: int, sock: socket.socket, auth_sock: socket.socket | None) -> None:
        self.index = index
        self.sock = sock
        self.auth_sock = auth_sock  # server.auth_listen
        self.process: asyncio.subprocess.Process | None = None
        self.ready = False

    def close_sockets(self) -> None:
        self.sock.close()
        if self.auth_sock is not None:
            self.auth_sock.close()

    async def send(self, line: bytes) -> None:
        process = self.process
        if process is None or process.returncode is not None or process.stdin is None:
            return  # a worker starting later reads the newest payload
        with contextlib.suppress(ConnectionError):
            process.stdin.write(line)
            await process.stdin.drain()


class Supervisor:
    """Several workers sharing the port; the supervisor owns readiness, restarts and reloads."""

    def __init__(self, config: Config, workers: int, log_format: str, stop: asyncio.Event, *,
                 config_path: str | None, generated: GeneratedSecrets) -> None:
        self.readiness = Readiness(reasons=["starting"])
        self._stop = stop
        self._log_format = log_format
        self._config_path = config_path
        self._generated = generated
        auth_listen = config.server.auth_listen
        self._pool = [_Worker(i, bind_socket(config.server.listen, reuse_port=True),
                              None if auth_listen is None else bind_socket(auth_listen, reuse_port=True))
                      for i in range(workers)]
        self._metrics_dir = tempfile.mkdtemp(prefix="ztproxy-metrics-")  # mode 0700: this user's processes only
        # The configuration a worker starts with: the latest valid one, so a restarted worker has it too.
        self._config = config
        self._payload = _config_line(config)

    def worker_sockets(self) -> list[tuple[str, str]]:
        """The metrics sockets of the workers that are ready, for the admin listener."""
        return [(str(worker.index), self._metrics_socket(worker)) for worker in self._pool if worker.ready]

    async def run(self) -> None:
        """Start the workers, keep them running until the stop, then drain them."""
        hangup = on_sighup()  # before the first worker: a SIGHUP from now on reloads, never ends the supervisor
        tasks = [asyncio.create_task(self._keep_running(worker)) for worker in self._pool]
        reloader = asyncio.create_task(self._broadcast_reloads(hangup))
        watcher = asyncio.create_task(watch_file(self._config_path, hangup)) \
            if self._config.server.watch_config and self._config_path else None
        log.info("supervisor_started", workers=len(self._pool), listen=self._config.server.listen, pid=os.getpid())
        await self._stop.wait()
        for task in (reloader, watcher):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        await self._drain(tasks)
        shutil.rmtree(self._metrics_dir, ignore_errors=True)

    def _metrics_socket(self, worker: _Worker) -> str:
        return os.path.join(self._metrics_dir, f"worker-{worker.index}.sock")

    def _update_readiness(self) -> None:
        missing = [str(worker.index) for worker in self._pool if not worker.ready]
        stopping = self._stop.is_set()
        self.readiness.ready = not missing and not stopping
        self.readiness.reasons = [] if self.readiness.ready else (
            ["draining"] if stopping else [f"worker {i} not ready" for i in missing])

    async def _keep_running(self, worker: _Worker) -> None:
        """Run ``worker`` until the stop: again after each exit, a little later each time it fails fast."""
        backoff = 0.5
        while not self._stop.is_set():
            process, lived = await self._run_once(worker)
            if self._stop.is_set():
                return
            log.error("worker_exited", worker=worker.index, pid=process.pid, exit_code=process.returncode)
            backoff = 0.5 if lived > _RESTART_BACKOFF_MAX else min(backoff * 2, _RESTART_BACKOFF_MAX)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(backoff):
                    await self._stop.wait()

    async def _run_once(self, worker: _Worker) -> tuple[asyncio.subprocess.Process, float]:
        """One process of ``worker``, ready when it says so, until it exits; and how long it lived."""
        read_fd, write_fd = os.pipe()
        worker.ready = False
        sockets = [worker.sock.fileno()]
        auth = [] if worker.auth_sock is None else ["--auth-socket-fd", str(worker.auth_sock.fileno())]
        if worker.auth_sock is not None:
            sockets.append(worker.auth_sock.fileno())
        worker.process = process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "ztproxy.worker", "--socket-fd", str(worker.sock.fileno()), *auth,
            "--ready-fd", str(write_fd), "--log-format", self._log_format,
            stdin=asyncio.subprocess.PIPE, pass_fds=(*sockets, write_fd),
            env={**os.environ, WORKER_METRICS_ENV: self._metrics_socket(worker)})
        os.close(write_fd)
        assert process.stdin is not None
        process.stdin.write(self._payload)  # stays open: reloads follow, one line each
        started = asyncio.get_running_loop().time()
        ready_task = asyncio.create_task(asyncio.to_thread(os.read, read_fd, 1))
        exit_task = asyncio.create_task(process.wait())
        done, _ = await asyncio.wait((ready_task, exit_task), return_when=asyncio.FIRST_COMPLETED)
        if ready_task in done and ready_task.result() == b"1":
            worker.ready = True
            self._update_readiness()
        await exit_task
        process.stdin.close()
        await asyncio.gather(ready_task, return_exceptions=True)
        os.close(read_fd)
        worker.ready = False
        self._update_readiness()
        return process, asyncio.get_running_loop().time() - started

    async def _broadcast_reloads(self, hangup: asyncio.Event) -> None:
        while True:
            await hangup.wait()
            hangup.clear()
            log.info("config_reload_requested", config=self._config_path)
            new = await reread(self._config_path, self._generated, workers=len(self._pool))
            if new is None:
                continue  # reported once, here; the workers keep serving what they have
            self._config, self._payload = new, _config_line(new)
            await asyncio.gather(*(worker.send(self._payload) for worker in self._pool))
            log.info("config_reload_sent", workers=len(self._pool))

    async def _drain(self, tasks: list[asyncio.Task[None]]) -> None:
        self._update_readiness()
        log.info("supervisor_draining", workers=len(self._pool))
        for worker in self._pool:
            if worker.process is not None and worker.process.returncode is None:
                worker.process.send_signal(signal.SIGTERM)
            # The workers hold the listening sockets while they drain; once they close them, the
            # kernel must refuse new connections, not queue them on our copies until we exit.
            worker.close_sockets()
        deadline = self._config.server.drain_delay + self._config.server.shutdown_grace + 5.0
        await asyncio.wait(tasks, timeout=deadline)
        for worker in self._pool:
            if worker.process is not None and worker.process.returncode is None:
                log.warning("worker_killed", worker=worker.index, pid=worker.process.pid)
                worker.process.kill()
        await asyncio.gather(*tasks, return_exceptions=True)
        for worker in self._pool:
            worker.close_sockets()

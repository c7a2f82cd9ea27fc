"""What the benchmark measures: the nginx upstream and the four targets in front of it.

``direct`` is wrk straight at the upstream; ``nginx`` a plain nginx reverse proxy;
``bare`` the few-line aiohttp forwarder in ``bare_forwarder.py``; ``ztproxy`` the real
proxy with its access log on. Each ``start_*`` returns a :class:`Running` once the target
answers ``GET /`` with the upstream's body, or raises :class:`TargetFailed`.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from processes import ManagedProcess, TargetFailed, free_port, http_get, wait_until_ok

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
READY_TIMEOUT = 10.0
ZTPROXY_READY_TIMEOUT = 30.0
# Connections are never closed by request count: wrk and the proxies keep theirs for the run.
KEEPALIVE_REQUESTS = 1_000_000

UPSTREAM_BODY = (b"ztproxy bench upstream: a small fixed body, "
                 b"the same for every request, about 100 bytes long.\n")
UPSTREAM_COOKIES = ("bench_a=1; Path=/; HttpOnly", "bench_b=2; Path=/; Secure")


@dataclass(frozen=True)
class BenchEnv:
    """Where things are, shared by every target."""

    workdir: Path
    upstream_url: str
    workers: int
    python: str
    ztproxy: str | None
    bench_dir: Path


@dataclass
class Running:
    """A target that answers: the URL to load and the processes to stop afterwards."""

    url: str
    processes: list[ManagedProcess] = field(default_factory=list)
    # Called after the processes are stopped, for extra lines in the report.
    describe: Callable[[], list[str]] = list
    notes: list[str] = field(default_factory=list)

    def stop(self) -> None:
        for process in self.processes:
            process.stop()


def find_ztproxy(repo_root: Path) -> str | None:
    candidate = repo_root / ".venv" / "bin" / "ztproxy"
    return str(candidate) if candidate.exists() else shutil.which("ztproxy")


def find_python(repo_root: Path) -> str:
    """The project's venv python (it has aiohttp and uvloop), else whatever runs us."""
    candidate = repo_root / ".venv" / "bin" / "python"
    return str(candidate) if candidate.exists() else os.environ.get("PYTHON", "python3")


def _nginx_main(prefix: Path, workers: int, http_body: str) -> str:
    temp = "\n".join(f"    {kind}_temp_path {prefix / kind};"
                     for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return f"""\
daemon off;
master_process on;
worker_processes {workers};
pid {prefix / 'nginx.pid'};
lock_file {prefix / 'nginx.lock'};
error_log {prefix / 'error.log'} warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
{temp}
    keepalive_requests {KEEPALIVE_REQUESTS};
{http_body}
}}
"""


def start_nginx(name: str, workdir: Path, port: int, workers: int, http_body: str,
                 ready_path: str = "/") -> ManagedProcess:
    prefix = workdir / name
    prefix.mkdir(exist_ok=True)  # later rounds reuse the folder
    conf = prefix / "nginx.conf"
    conf.write_text(_nginx_main(prefix, workers, http_body), encoding="utf-8")
    argv = [NGINX, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")]
    process = ManagedProcess.spawn(name, argv, workdir)
    try:
        wait_until_ok(f"http://127.0.0.1:{port}{ready_path}", [process], READY_TIMEOUT)
    except TargetFailed as exc:
        process.stop()
        raise TargetFailed(f"{exc}\n    error.log: {_tail(prefix / 'error.log')}") from None
    return process


def start_upstream(workdir: Path, extra_locations: str = "") -> tuple[ManagedProcess, str]:
    """nginx answering every ``GET`` with 200, a fixed body and two Set-Cookie lines.

    ``extra_locations``: more ``location`` blocks for the server (``run_auth.py``'s probe).
    """
    port = free_port()
    cookies = "\n".join(f'            add_header Set-Cookie "{cookie}" always;'
                        for cookie in UPSTREAM_COOKIES)
    body = f"""\
    server {{
        listen 127.0.0.1:{port} backlog=4096;
{extra_locations}
        location / {{
            default_type text/plain;
{cookies}
            add_header Cache-Control "no-store" always;
            return 200 "{UPSTREAM_BODY.decode().rstrip()}\\n";
        }}
    }}"""
    return start_nginx("upstream", workdir, port, 1, body), f"http://127.0.0.1:{port}"


def start_direct(env: BenchEnv) -> Running:
    return _checked(Running(url=env.upstream_url + "/"))


def start_nginx_proxy(env: BenchEnv) -> Running:
    port = free_port()
    upstream = env.upstream_url.removeprefix("http://")
    body = f"""\
    upstream backend {{
        server {upstream};
        keepalive 256;
        keepalive_requests {KEEPALIVE_REQUESTS};
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
        }}
    }}"""
    process = start_nginx("nginx-proxy", env.workdir, port, 2, body)
    return _checked_or_stop(Running(url=f"http://127.0.0.1:{port}/", processes=[process]), READY_TIMEOUT)


def start_bare(env: BenchEnv) -> Running:
    port = free_port()
    argv = [env.python, str(env.bench_dir / "bare_forwarder.py"), "--listen", f"127.0.0.1:{port}",
            "--upstream", env.upstream_url, "--workers", str(env.workers)]
    process = ManagedProcess.spawn("bare", argv, env.workdir)
    running = Running(url=f"http://127.0.0.1:{port}/", processes=[process])
    return _checked_or_stop(running, READY_TIMEOUT)


def ztproxy_listener_yaml(port: int, admin_port: int, server: str = "") -> str:
    """The start of every benchmark ztproxy config: listeners (``server``: more of that
    section, indented), and the JSON access log on."""
    return f"""\
server:
  listen: 127.0.0.1:{port}
  admin_listen: 127.0.0.1:{admin_port}
{server}logging:
  format: json
  access_log: true
"""


def start_ztproxy(env: BenchEnv) -> Running:
    if env.ztproxy is None:
        raise TargetFailed("ztproxy executable not found (.venv/bin/ztproxy or PATH)")
    port, admin_port = free_port(), free_port()
    config = env.workdir / "ztproxy.yaml"
    config.write_text(ztproxy_listener_yaml(port, admin_port) + f"""\
routes:
  - name: bench
    host: 127.0.0.1
    upstream: {env.upstream_url}
    allow: [{{public: true}}]
""", encoding="utf-8")
    access_log = env.workdir / "ztproxy-access.log"
    argv = [env.ztproxy, "run", "-c", str(config), "--workers", str(env.workers)]
    process = ManagedProcess.spawn("ztproxy", argv, env.workdir, stdout_path=access_log)
    running = Running(url=f"http://127.0.0.1:{port}/", processes=[process],
                      describe=lambda: [_describe_log(access_log)])
    try:
        wait_until_ok(f"http://127.0.0.1:{admin_port}/readyz", [process], ZTPROXY_READY_TIMEOUT)
    except TargetFailed:
        running.stop()
        raise
    return _checked_or_stop(running, READY_TIMEOUT)


TARGETS: dict[str, Callable[[BenchEnv], Running]] = {
    "direct": start_direct,
    "nginx": start_nginx_proxy,
    "bare": start_bare,
    "ztproxy": start_ztproxy,
}
PYTHON_PROXIES = ("bare", "ztproxy")


def _checked_or_stop(running: Running, timeout: float) -> Running:
    try:
        wait_until_ok(running.url, running.processes, timeout)
        return _checked(running)
    except TargetFailed:
        running.stop()
        raise


def _checked(running: Running) -> Running:
    """A forwarded ``GET /`` must bring back the upstream's status and body, and both cookies."""
    try:
        reply = http_get(running.url)
    except OSError as exc:
        raise TargetFailed(f"GET {running.url} failed: {exc}") from exc
    if reply.status != 200 or reply.body != UPSTREAM_BODY:
        raise TargetFailed(f"GET {running.url}: status {reply.status}, body {reply.body[:80]!r}")
    cookies = reply.header_values("Set-Cookie")
    if sorted(cookies) != sorted(UPSTREAM_COOKIES):
        running.notes.append(f"warning: Set-Cookie forwarded as {cookies!r}")
    return running


def _describe_log(path: Path) -> str:
    try:
        size = path.stat().st_size
        with path.open("rb") as log:
            lines = sum(chunk.count(b"\n") for chunk in iter(lambda: log.read(1 << 20), b""))
    except OSError as exc:
        return f"access log: unreadable ({exc.strerror})"
    return f"access log {size / 1e6:.1f} MB, {lines:,} lines"


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(none)"

"""Caddy as a plain reverse proxy in front of the bench upstream: config and launch.

The yardstick of issue 19's first target in ``run_auth.py``: Debian's ``caddy`` (Go's
net/http server and client), no authentication, keep-alive connections to the upstream,
its JSON access log to a file like the other proxies. The bench writes Caddy's native
JSON config itself (no Caddyfile adapter): listener on 127.0.0.1 only, admin endpoint off,
nothing persisted, automatic HTTPS off, storage, config and data dirs inside the bench's
temp dir, so nothing of the user's home or of ``/etc/caddy`` is read or written.
``GOMAXPROCS`` bounds the threads that run Go code at once to the CPUs ztproxy gets.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from processes import ManagedProcess, TargetFailed, free_port, wait_until_ok

CADDY = shutil.which("caddy") or "/usr/bin/caddy"
INSTALL_HINT = "apt-get install -y caddy (Debian's package; the bench starts its own, on a free port)"
READY_TIMEOUT = 15.0
# As many idle upstream connections as nginx's proxy keeps (targets.start_nginx_proxy):
# never fewer than wrk's connections, so none is closed and reopened under load.
KEEPALIVE_IDLE_CONNECTIONS = 256
KEEPALIVE_IDLE_TIMEOUT_NS = 120 * 10**9
ACCESS_LOGGER = "bench_access"


class CaddyMissing(TargetFailed):
    """caddy is not installed."""


def check_installed() -> None:
    """Raise :class:`CaddyMissing`, saying how to install, unless caddy is here."""
    if not os.access(CADDY, os.X_OK):
        raise CaddyMissing(f"caddy not found ({CADDY}): {INSTALL_HINT}")


def caddy_config(port: int, upstream_url: str, root: Path, access_log: Path) -> dict[str, object]:
    """Caddy's JSON config: one server on 127.0.0.1:``port`` proxying everything to the upstream."""
    listen = f"127.0.0.1:{port}"
    return {
        "admin": {"disabled": True, "config": {"persist": False}},
        "storage": {"module": "file_system", "root": str(root / "data")},
        "logging": {"logs": {
            # Caddy's own messages go to stderr (a file of the bench's), access lines only to the log.
            "default": {"exclude": [f"http.log.access.{ACCESS_LOGGER}"]},
            ACCESS_LOGGER: {
                "writer": {"output": "file", "filename": str(access_log), "roll": False},
                "include": [f"http.log.access.{ACCESS_LOGGER}"],
            },
        }},
        "apps": {"http": {"servers": {"bench": {
            "listen": [listen],
            "automatic_https": {"disable": True},
            "logs": {"default_logger_name": ACCESS_LOGGER},
            "routes": [{"handle": [{
                "handler": "reverse_proxy",
                "transport": {"protocol": "http", "keep_alive": {
                    "enabled": True,
                    "idle_timeout": KEEPALIVE_IDLE_TIMEOUT_NS,
                    "max_idle_conns": KEEPALIVE_IDLE_CONNECTIONS,
                    "max_idle_conns_per_host": KEEPALIVE_IDLE_CONNECTIONS,
                }},
                "upstreams": [{"dial": upstream_url.removeprefix("http://").rstrip("/")}],
            }]}],
        }}}},
    }


def start_caddy(workdir: Path, upstream_url: str, cpus: int) -> tuple[ManagedProcess, str]:
    """Write the config, run ``caddy run`` with ``GOMAXPROCS=cpus``, wait until it forwards a 200."""
    check_installed()
    root = workdir / "caddy"
    root.mkdir(exist_ok=True)
    port = free_port()
    config = root / "caddy.json"
    config.write_text(json.dumps(caddy_config(port, upstream_url, root, workdir / "caddy-access.log"),
                                 indent=2) + "\n", encoding="utf-8")
    # env execs caddy in place: the PID (and process group) stopped later is Caddy's own.
    argv = ["env", f"GOMAXPROCS={cpus}", f"XDG_CONFIG_HOME={root / 'config'}", f"XDG_DATA_HOME={root / 'data'}",
            CADDY, "run", "--config", str(config)]
    process = ManagedProcess.spawn("caddy", argv, workdir)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ok(url + "/", [process], READY_TIMEOUT)
    except BaseException:  # also Ctrl-C: never leave it running
        process.stop()
        raise
    return process, url

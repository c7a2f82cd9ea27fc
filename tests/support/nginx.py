"""Debian's nginx as a test fixture: a server configuration of the test's, on loopback, stopped by PID.

``start_nginx(server_blocks)`` writes an ``nginx.conf`` of its own in the test's tmp dir
(pid file, logs and temp paths there, never the system's), runs ``nginx`` in the
foreground as a child process, waits until the port of the first ``listen`` accepts, and
stops it at teardown. The error log is kept for the failure report.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from tests.support.server_process import ServerProcess

NGINX = "/usr/sbin/nginx"

NginxFactory = Callable[[str], Awaitable[ServerProcess]]


def nginx_conf(workdir: Path, server_blocks: str) -> str:
    temp = workdir / "temp"
    # As root, nginx's workers would run as nobody, who cannot enter the test's tmp dir.
    user = "user root;" if os.geteuid() == 0 else ""
    return f"""
{user}
worker_processes 1;
daemon off;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {workdir}/access.log;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
{server_blocks}
}}
"""


@pytest.fixture
async def start_nginx(tmp_path: Path) -> AsyncIterator[NginxFactory]:
    if shutil.which(NGINX) is None:
        raise RuntimeError(f"{NGINX} is missing: ./dev test installs Debian's nginx")
    started: list[ServerProcess] = []

    async def start(server_blocks: str) -> ServerProcess:
        workdir = tmp_path / f"nginx-{len(started)}"
        (workdir / "temp").mkdir(parents=True)
        conf = workdir / "nginx.conf"
        conf.write_text(nginx_conf(workdir, server_blocks))
        listen = re.search(r"^\s*listen\s+(?:127\.0\.0\.1:)?(\d+)", server_blocks, re.MULTILINE)
        assert listen is not None, "the server blocks listen nowhere"
        port = int(listen.group(1))
        check = subprocess.run([NGINX, "-t", "-p", str(workdir), "-c", str(conf)], capture_output=True)
        if check.returncode != 0:
            raise RuntimeError(f"nginx -t refused the configuration:\n{check.stderr.decode(errors='replace')}")
        process = subprocess.Popen([NGINX, "-p", str(workdir), "-c", str(conf)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        nginx = ServerProcess(process=process, port=port, log=workdir / "error.log")
        started.append(nginx)
        await nginx.wait_for_port()
        return nginx

    yield start
    for nginx in started:
        nginx.stop(signal.SIGQUIT)  # graceful: finish what is in flight

"""Debian's Caddy as a test fixture: a Caddyfile of the test's, on loopback, stopped by PID.

``start_caddy(site_blocks, port)`` runs ``caddy run`` with the admin endpoint and automatic
HTTPS off, its data and config directories in the test's tmp dir, and waits until ``port``
accepts. Caddy's output is kept for the failure report.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from tests.support.server_process import ServerProcess

CADDY = "/usr/bin/caddy"

CaddyFactory = Callable[[str, int], Awaitable[ServerProcess]]


@pytest.fixture
async def start_caddy(tmp_path: Path) -> AsyncIterator[CaddyFactory]:
    if shutil.which(CADDY) is None:
        raise RuntimeError(f"{CADDY} is missing: ./dev test installs Debian's caddy")
    started: list[ServerProcess] = []

    async def start(site_blocks: str, port: int) -> ServerProcess:
        workdir = tmp_path / f"caddy-{len(started)}"
        workdir.mkdir()
        caddyfile = workdir / "Caddyfile"
        # No admin API (it would listen on 2019), no certificates to get: plain HTTP on loopback.
        caddyfile.write_text("{\n    admin off\n    auto_https off\n}\n" + site_blocks)
        env = {**os.environ, "HOME": str(workdir), "XDG_DATA_HOME": str(workdir / "data"),
               "XDG_CONFIG_HOME": str(workdir / "config")}
        log = workdir / "caddy.log"
        with log.open("wb") as output:
            process = subprocess.Popen([CADDY, "run", "--config", str(caddyfile), "--adapter", "caddyfile"],
                                       stdout=output, stderr=subprocess.STDOUT, env=env, cwd=workdir)
        caddy = ServerProcess(process=process, port=port, log=log)
        started.append(caddy)
        await caddy.wait_for_port()
        return caddy

    yield start
    for caddy in started:
        caddy.stop()

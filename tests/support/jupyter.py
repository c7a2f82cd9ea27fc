"""Test fixture: JupyterLab 4 (``jupyter lab``, a test dependency) as a real app on loopback.

- ``start_jupyter``: a factory
  ``start_jupyter(base_url="/jupyter/", local_hostnames=["jupyter.localhost"])`` -> ``JupyterLab``,
  a ``jupyter lab`` process on 127.0.0.1 and a free port, ready once its ``/api`` answers;
  stopped by PID at the end of the test (SIGTERM: Jupyter shuts its kernels down itself).
  ``local_hostnames``: the host names it is reached by through the proxy (a deployment's one
  setting besides sign-in: Jupyter refuses requests for other names than local ones).

Jupyter is set up as it would be behind ztproxy, and no further: its own sign-in is off (no
token, no password: the proxy signs people in), while its XSRF, Host and Origin checks stay on.
Everything it writes (settings, workspaces, runtime files, the notebooks) stays in the test's
tmp dir: HOME and the JUPYTER_* directories point there. Nothing calls out: no news feed, no
update check, no extension manager asking PyPI.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import free_port

START_TIMEOUT = 90.0  # seconds; usually 2 or 3, but a loaded 2-core machine imports slowly
STOP_TIMEOUT = 15.0
LOG_TAIL_CHARS = 4000

# Jupyter's configuration file: only what keeps a test run off the network.
OFFLINE_CONFIG = {
    "LabApp": {
        "news_url": None,
        "check_for_updates_class": "jupyterlab.handlers.announcements.NeverCheckForUpdate",
        "extension_manager": "readonly",
    },
}


@dataclass
class JupyterLab:
    """One ``jupyter lab`` process: where it listens (``url`` ends with its base URL) and its files."""

    process: subprocess.Popen[bytes]
    port: int
    base_url: str
    root_dir: Path
    runtime_dir: Path
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.base_url}"

    def log_tail(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")[-LOG_TAIL_CHARS:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _wait_ready(jupyter: JupyterLab) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if jupyter.process.poll() is not None:
            raise RuntimeError(f"jupyter lab exited with {jupyter.process.returncode}:\n{jupyter.log_tail()}")
        try:
            with urllib.request.urlopen(jupyter.url + "api", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"jupyter lab did not answer at {jupyter.url}api within {START_TIMEOUT:g}s:\n"
                       f"{jupyter.log_tail()}")


JupyterFactory = Callable[..., JupyterLab]


@pytest.fixture
def start_jupyter(tmp_path: Path) -> Iterator[JupyterFactory]:
    """Start ``jupyter lab`` processes for this test; each gets its own directories and port."""
    started: list[JupyterLab] = []

    def start(*, base_url: str = "/", local_hostnames: Sequence[str] = ()) -> JupyterLab:
        home = tmp_path / f"jupyter-{len(started)}"
        dirs = {name: home / name for name in ("root", "config", "data", "runtime", "ipython")}
        for directory in dirs.values():
            directory.mkdir(parents=True)
        (dirs["config"] / "jupyter_server_config.json").write_text(json.dumps(OFFLINE_CONFIG), encoding="utf-8")
        env = {**os.environ, "HOME": str(home), "JUPYTER_CONFIG_DIR": str(dirs["config"]),
               "JUPYTER_DATA_DIR": str(dirs["data"]), "JUPYTER_RUNTIME_DIR": str(dirs["runtime"]),
               "IPYTHONDIR": str(dirs["ipython"]), "JUPYTER_PLATFORM_DIRS": "1", "PYTHONUNBUFFERED": "1"}
        port = free_port()
        log_path = home / "jupyter.log"
        command = [
            sys.executable, "-m", "jupyterlab", "--no-browser",
            "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
            f"--ServerApp.root_dir={dirs['root']}", f"--ServerApp.base_url={base_url}",
            # ztproxy signs people in; Jupyter's XSRF, Host and Origin checks stay as they are.
            "--IdentityProvider.token=", "--ServerApp.password=",
            "--allow-root",  # the tests run as root in CI
            # The names people reach it by through the proxy, beside localhost and loopback addresses:
            # Jupyter refuses other Host names (DNS rebinding).
            *(f"--ServerApp.local_hostnames={name}" for name in local_hostnames),
        ]
        with open(log_path, "wb") as log_file:
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log_file,
                                       stderr=subprocess.STDOUT, cwd=dirs["root"], env=env)
        jupyter = JupyterLab(process=process, port=port, base_url=base_url, root_dir=dirs["root"],
                             runtime_dir=dirs["runtime"], log_path=log_path)
        started.append(jupyter)
        _wait_ready(jupyter)
        return jupyter

    yield start
    for jupyter in started:
        jupyter.stop()

"""Child processes for the benchmark: free ports, start, readiness polling, stop.

Every process runs in its own session, so stopping one means: SIGTERM its PID, SIGKILL
it after a timeout, then the same for anything it left behind in its own process group
(and nothing else). Plain HTTP checks use urllib with proxies disabled: loopback only.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

STOP_TIMEOUT = 5.0
POLL_INTERVAL = 0.1
TAIL_LINES = 15
MAX_TREE = 1000  # processes tree_rss_bytes follows at most

# An empty ProxyHandler: never send a loopback probe through an *_proxy environment variable.
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class TargetFailed(Exception):
    """A target could not be started or does not answer as expected."""


def free_port() -> int:
    """A port on 127.0.0.1 that was free a moment ago (bind port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class ManagedProcess:
    """One process we started, with its stdout/stderr going to files in the work dir."""

    name: str
    popen: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path
    _files: list[IO[bytes]] = field(default_factory=list)

    @classmethod
    def spawn(cls, name: str, argv: Sequence[str], workdir: Path,
              stdout_path: Path | None = None) -> ManagedProcess:
        stdout_path = stdout_path or workdir / f"{name}.stdout"
        stderr_path = workdir / f"{name}.stderr"
        stdout = stdout_path.open("wb")
        stderr = stderr_path.open("wb")
        try:
            popen = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=stdout,
                                     stderr=stderr, start_new_session=True)
        except OSError as exc:
            stdout.close()
            stderr.close()
            raise TargetFailed(f"cannot run {argv[0]}: {exc.strerror}") from exc
        return cls(name, popen, stdout_path, stderr_path, [stdout, stderr])

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stderr_tail(self, lines: int = TAIL_LINES) -> str:
        try:
            text = self.stderr_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; then the same for leftovers in its group."""
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._stop_group(timeout)
        for file in self._files:
            file.close()
        self._files.clear()

    def _stop_group(self, timeout: float) -> None:
        # start_new_session made the PID the id of a group holding only this process and
        # its own children (worker processes that outlived their parent).
        group = self.pid
        for signum in (signal.SIGTERM, signal.SIGKILL):
            if not _group_exists(group):
                return
            os.killpg(group, signum)
            deadline = time.monotonic() + timeout
            while _group_exists(group) and time.monotonic() < deadline:
                time.sleep(POLL_INTERVAL)


def group_cpu_seconds(group: int) -> float:
    """User + system CPU time used so far by the live processes of a process group (Linux /proc)."""
    ticks = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text(encoding="ascii", errors="replace")
        except OSError:  # exited meanwhile
            continue
        # The command name (field 2) may hold spaces and parentheses: split after the last ")".
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[2]) == group:  # pgrp; then utime and stime are fields 14 and 15 of the line
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def tree_rss_bytes(root: int) -> dict[int, int]:
    """Resident memory (bytes) of ``root`` and of every live descendant, by PID (Linux /proc).

    For a process that does not start its own session (a supervisor and its workers in the
    caller's group): follows the kernel's child lists rather than the process group.
    """
    page = os.sysconf("SC_PAGE_SIZE")
    found: dict[int, int] = {}
    pending = [root]
    while pending and len(found) < MAX_TREE:  # bounded, even if PIDs were reused into a cycle
        pid = pending.pop()
        if pid in found:
            continue
        try:
            resident = int((Path("/proc") / str(pid) / "statm").read_text(encoding="ascii").split()[1])
        except (OSError, IndexError, ValueError):  # exited meanwhile
            continue
        found[pid] = resident * page
        pending.extend(_children(pid))
    return dict(sorted(found.items()))


def _children(pid: int) -> list[int]:
    # Each thread has its own list: a child started from another thread is listed there.
    children: list[int] = []
    try:
        for task in (Path("/proc") / str(pid) / "task").iterdir():
            with contextlib.suppress(OSError):
                children.extend(int(child) for child in (task / "children").read_text(encoding="ascii").split())
    except OSError:
        pass
    return children


def _group_exists(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class HttpReply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header_values(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key.lower() == name.lower()]


def http_get(url: str, timeout: float = 2.0) -> HttpReply:
    """GET ``url``; an HTTP error status is a reply, a connection problem raises OSError."""
    try:
        with _HTTP.open(url, timeout=timeout) as reply:
            return HttpReply(reply.status, list(reply.headers.items()), reply.read())
    except urllib.error.HTTPError as exc:
        return HttpReply(exc.code, list(exc.headers.items()), exc.read())


def wait_until_ok(url: str, processes: Sequence[ManagedProcess], timeout: float) -> None:
    """Poll ``url`` until it answers 200; fail early if one of ``processes`` exits."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        for process in processes:
            if not process.alive():
                raise TargetFailed(f"{process.name} exited with status {process.popen.returncode}"
                                   + _tail_suffix(process))
        try:
            reply = http_get(url, timeout=1.0)
            if reply.status == 200:
                return
            last = f"status {reply.status}"
        except OSError as exc:
            last = str(getattr(exc, "reason", exc))
        time.sleep(POLL_INTERVAL)
    tails = "".join(_tail_suffix(process) for process in processes)
    raise TargetFailed(f"{url} not ready after {timeout:.0f}s ({last}){tails}")


def _tail_suffix(process: ManagedProcess) -> str:
    tail = process.stderr_tail()
    return f" (stderr tail of {process.name}:\n{_indent(tail)})" if tail else ""


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())

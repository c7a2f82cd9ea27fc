"""Data-plane spike: the same per-request work (``work.py``) on three server cores, one run.

Cores: ``aiohttp`` (aiohttp's server, as ztproxy today), ``httptools`` (an asyncio protocol
on llhttp, as uvicorn), ``granian`` (Granian's RSGI: hyper in Rust). Each gets the nginx
upstream of ``bench/run.py``, ``--workers`` processes, and wrk with a session cookie
(``status_200.lua``: every answer must be a 200), in interleaved rounds. Reported per core
(median round): req/s, p50, p99, and the CPU per request of the core's process tree, from
``/proc``.

Run with a python that has granian, httptools, uvloop and aiohttp (a throwaway venv: they
are not ztproxy's dependencies for this), from the repository root:

    python3 -m venv /tmp/perf-venv && /tmp/perf-venv/bin/pip install granian httptools uvloop aiohttp
    /tmp/perf-venv/bin/python bench/spikes/run_spikes.py [--rounds 3] [--duration 10] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

SPIKES = Path(__file__).resolve().parent
BENCH = SPIKES.parent
REPO = BENCH.parent
sys.path[:0] = [str(BENCH), str(REPO)]

from loadgen import WrkResult, parse_report, wrk_output  # noqa: E402
from processes import ManagedProcess, TargetFailed, free_port, group_cpu_seconds, http_get  # noqa: E402
from targets import start_upstream  # noqa: E402
from work import SESSION_COOKIE, SESSION_TOKEN  # noqa: E402

CORES = ("aiohttp", "httptools", "granian", "llhttp_aiohttp")
STATUS_SCRIPT = BENCH / "status_200.lua"
WARMUP = 2.0


@dataclass
class Round:
    core: str
    result: WrkResult
    cpu_us: float


def start_core(core: str, workdir: Path, upstream: str, workers: int,
               python: str = sys.executable) -> tuple[ManagedProcess, str]:
    """``core`` serving on a free port with ``python`` (its venv has granian, httptools, uvloop)."""
    port = free_port()
    env_prefix = ["env", f"PYTHONPATH={SPIKES}:{REPO}", f"SPIKE_UPSTREAM={upstream}"]
    if core == "granian":
        granian = str(Path(python).with_name("granian"))
        argv = [*env_prefix, granian, "--interface", "rsgi", "--working-dir", str(SPIKES), "--host", "127.0.0.1",
                "--port", str(port), "--workers", str(workers), "--loop", "uvloop", "--no-ws", "--http", "1",
                "--log-level", "warning", "--backlog", "1024", "granian_core:app"]
    else:
        argv = [*env_prefix, python, str(SPIKES / f"{core}_core.py"), "--listen", f"127.0.0.1:{port}",
                "--upstream", upstream, "--workers", str(workers)]
    process = ManagedProcess.spawn(core, argv, workdir)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_answering(url, process)
    except BaseException:
        process.stop()
        raise
    return process, url


def wait_answering(url: str, process: ManagedProcess, timeout: float = 20.0) -> None:
    """Until ``url`` answers without the cookie: a 401 (the per-request work refuses it)."""
    deadline = time.monotonic() + timeout
    while True:
        if not process.alive():
            raise TargetFailed(f"{process.name} exited: {process.stderr_tail()}")
        try:
            if http_get(url, timeout=1.0).status == 401:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TargetFailed(f"{url} not answering after {timeout:.0f}s: {process.stderr_tail()}")
        time.sleep(0.1)


def load(url: str, args: argparse.Namespace, duration: float) -> WrkResult:
    text = wrk_output(url, threads=args.threads, connections=args.connections, duration=duration,
                      extra_args=["-s", str(STATUS_SCRIPT), "-H", f"Cookie: {SESSION_COOKIE}={SESSION_TOKEN}"])
    if "Non-200 responses: 0" not in text:
        raise TargetFailed(f"answers other than 200:\n{text.strip()[-300:]}")
    return parse_report(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--only", default=",".join(CORES))
    args = parser.parse_args()
    cores = [core for core in CORES if core in args.only.split(",")]
    workdir = Path(tempfile.mkdtemp(prefix="ztproxy-spikes-"))
    upstream, upstream_url = start_upstream(workdir)
    rounds: list[Round] = []
    try:
        for number in range(args.rounds):
            order = cores if number % 2 == 0 else cores[::-1]
            for core in order:
                process, url = start_core(core, workdir, upstream_url, args.workers)
                try:
                    load(url, args, WARMUP)
                    before = group_cpu_seconds(process.pid)
                    result = load(url, args, args.duration)
                    cpu = group_cpu_seconds(process.pid) - before
                finally:
                    process.stop()
                rounds.append(Round(core, result, cpu / result.requests * 1e6))
                print(f"round {number + 1} {core}: {result.requests_per_second:,.0f} req/s, "
                      f"p99 {result.p99_ms:.2f} ms, {rounds[-1].cpu_us:.0f} us CPU/req", file=sys.stderr)
                time.sleep(1.0)
    finally:
        upstream.stop()
    print(f"\nwrk -t{args.threads} -c{args.connections} -d{args.duration:g}s, {args.workers} workers, "
          f"{args.rounds} interleaved rounds, medians; load average now {os.getloadavg()[0]:.2f}\n")
    print("| core | req/s | p50 ms | p99 ms | CPU us/req | rounds (req/s) |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    for core in cores:
        mine = [r for r in rounds if r.core == core]
        print(f"| {core} | {statistics.median(r.result.requests_per_second for r in mine):,.0f} "
              f"| {statistics.median(r.result.p50_ms for r in mine):.2f} "
              f"| {statistics.median(r.result.p99_ms for r in mine):.2f} "
              f"| {statistics.median(r.cpu_us for r in mine):.0f} "
              f"| {' / '.join(f'{r.result.requests_per_second:,.0f}' for r in mine)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

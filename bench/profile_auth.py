"""Where the CPU of a signed-in request goes: ztproxy under wrk, sampled by py-spy.

Run it with ``.venv/bin/python``. Starts what ``run_auth.py`` starts for ztproxy (Redis,
the nginx upstream, the demo IdP, ``ztproxy run --workers N`` with Redis sessions), signs
in once, then:

1. a clean run: ``wrk`` with the session cookie (every answer must be a 200), and the CPU
   the ztproxy process tree used, from ``/proc``: CPU per request, req/s, p99;
2. a profiled run, the same load with ``py-spy record`` on every worker (``--native``
   unless ``--no-native``: C frames of uvloop, llhttp and the kernel entry points too).

Each sample is given to the component of its innermost frame that names one (a
``structlog`` call inside the policy stage counts as telemetry), and each component's share
of the samples times the clean run's CPU per request is its microseconds per request.
py-spy is a measurement tool, not a dependency: install it into a throwaway venv
(``python3 -m venv /tmp/perf-venv && /tmp/perf-venv/bin/pip install py-spy``) and pass
``--py-spy /tmp/perf-venv/bin/py-spy`` (the default when it exists).

    .venv/bin/python bench/profile_auth.py [--duration 15] [--workers 2] [--connections 32]
                                           [--out DIR]   # keeps the collapsed stacks (flamegraph input)
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path

from auth_world import BENCH_USER_AGENT, USER, ZTPROXY_COOKIE, sign_in, start_redis, start_ztproxy_auth
from auth_world import write_ztproxy_config as ztproxy_config
from loadgen import parse_report, wrk_output
from processes import TargetFailed, free_port, group_cpu_seconds
from targets import BenchEnv, find_python, find_ztproxy, start_upstream

from ztproxy.demo_idp import DemoIdp, IdpClient

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
STATUS_SCRIPT = BENCH_DIR / "status_200.lua"
DEFAULT_PY_SPY = "/tmp/perf-venv/bin/py-spy"
WARMUP_SECONDS = 3.0
SAMPLE_RATE = 250  # per second and worker: enough for percent-level shares, light on 2 cores

# (component, substrings of a frame's "function (file:line)" text), tried in order for each
# frame from the innermost outwards; the first frame that matches any names the component.
COMPONENTS: list[tuple[str, tuple[str, ...]]] = [
    ("telemetry: access/decision events, metrics, traces",
     ("ztproxy/telemetry", "ztproxy/metrics", "ztproxy/tracing", "structlog/", "opentelemetry/",
      "prometheus_client/", "/logging/", "decision_log", "/json/")),
    ("session: cookie, ticket, cache, store", ("ztproxy/sessions/", "ztproxy/cookies", "redis/")),
    ("risk: session risk signals", ("ztproxy/risk", "ztproxy/session_risk")),
    ("policy: authorize, evaluate", ("ztproxy/authorize", "ztproxy/policy/")),
    ("identity: headers, assertion", ("ztproxy/upstream_identity", "ztproxy/assertion/", "ztproxy/signing")),
    ("hygiene: header rules, request intake", ("ztproxy/headers", "ztproxy/intake", "ztproxy/calling_proxies",
                                              "ztproxy/origins")),
    ("forward: ztproxy's upstream client (incl. its send)", ("ztproxy/upstream_client/",)),
    ("forward: upstream stage, response back", ("ztproxy/upstream.py", "ztproxy/forward.py")),
    ("pipeline: stages, routing, context", ("ztproxy/pipeline", "ztproxy/app", "ztproxy/routing",
                                            "ztproxy/context", "ztproxy/authenticate", "ztproxy/endpoints",
                                            "ztproxy/device", "ztproxy/", )),
    ("aiohttp server: response write (incl. its send)", ("aiohttp/web_response", "aiohttp/http_writer",
                                                         "aiohttp/abc")),
    ("aiohttp server: protocol, request objects", ("aiohttp/",)),
    ("llhttp (httptools, aiohttp's C parser)", ("httptools", "llhttp", "_http_parser")),
    ("uvloop: event loop, transports", ("uvloop", "libuv", "uv__")),
    ("libc: other calls", ("(libc",)),
    ("CPython interpreter, GC, allocation", ("libpython", "python3.", "_PyEval", "PyObject", "_Py", "gc_",
                                             "malloc", "free")),
]
OTHER = "other"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=15.0, help="seconds of each measured run (15)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (32)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (2)")
    parser.add_argument("--workers", type=int, default=2, help="ztproxy processes (2)")
    parser.add_argument("--py-spy", default=DEFAULT_PY_SPY if Path(DEFAULT_PY_SPY).exists() else "py-spy",
                        help=f"the py-spy binary ({DEFAULT_PY_SPY} when it exists)")
    parser.add_argument("--no-native", action="store_true", help="Python frames only")
    parser.add_argument("--top", type=int, default=25, help="innermost frames listed (25)")
    parser.add_argument("--out", type=Path, help="keep the collapsed stacks here")
    return parser.parse_args(argv)


def load(url: str, cookie: str, args: argparse.Namespace, duration: float) -> str:
    extra = ["-s", str(STATUS_SCRIPT), "-H", f"Cookie: {cookie}", "-H", f"User-Agent: {BENCH_USER_AGENT}"]
    text = wrk_output(url, threads=args.threads, connections=args.connections, duration=duration, extra_args=extra)
    if "Non-200 responses: 0" not in text:
        raise TargetFailed(f"answers other than 200 under load:\n{text.strip()[-400:]}")
    return text


def worker_pids(supervisor: int) -> list[int]:
    children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    return [int(pid) for pid in children] or [supervisor]


# A sample whose innermost frame is one of these libc calls is the kernel's work for it
# (on loopback a send also runs the receiver's TCP input), whoever called it.
SYSCALLS = {"write": "kernel: socket writes (send)", "writev": "kernel: socket writes (send)",
            "sendmsg": "kernel: socket writes (send)", "read": "kernel: socket reads (recv)",
            "recv": "kernel: socket reads (recv)", "epoll_pwait": "kernel: epoll_wait (the loop polling)",
            "epoll_wait": "kernel: epoll_wait (the loop polling)"}


def component_of(stack: list[str]) -> str:
    innermost = stack[-1] if stack else ""
    if "(libc" in innermost and innermost.split(" ", 1)[0] in SYSCALLS:
        return SYSCALLS[innermost.split(" ", 1)[0]]
    for frame in reversed(stack):
        for name, needles in COMPONENTS:
            if any(needle in frame for needle in needles):
                return name
    return OTHER


def read_collapsed(paths: list[Path]) -> tuple[collections.Counter[str], collections.Counter[str], int]:
    """Samples per component and per innermost frame, and the total, from py-spy's raw output."""
    components: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    total = 0
    for path in paths:
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            stack_text, _, count_text = line.rpartition(" ")
            if not count_text.isdigit():
                continue
            count = int(count_text)
            stack = stack_text.split(";")
            components[component_of(stack)] += count
            leaves[stack[-1]] += count
            total += count
    return components, leaves, total


async def main_async(args: argparse.Namespace, workdir: Path) -> int:
    async with AsyncExitStack() as stack:
        upstream, upstream_url = start_upstream(workdir)
        stack.callback(upstream.stop)
        redis_process, redis_port = start_redis(workdir)
        stack.callback(redis_process.stop)
        env = BenchEnv(workdir=workdir, upstream_url=upstream_url, workers=args.workers,
                       python=find_python(REPO_ROOT), ztproxy=find_ztproxy(REPO_ROOT), bench_dir=BENCH_DIR)
        port, admin_port, idp_port = free_port(), free_port(), free_port()
        url = f"http://127.0.0.1:{port}/"
        client = IdpClient(client_id="ztproxy", client_secret=secrets.token_urlsafe(24),
                           redirect_uris=(f"http://127.0.0.1:{port}/.ztproxy/callback",))
        idp = DemoIdp(workdir=workdir / "idp", port=idp_port, clients=[client], users=[USER])
        await stack.enter_async_context(idp)
        config = ztproxy_config(workdir, port=port, admin_port=admin_port, issuer=idp.issuer, client=client,
                                redis_port=redis_port, upstream_url=upstream_url)
        ztproxy = start_ztproxy_auth(env, config, admin_port, workdir / "ztproxy-access.log")
        stack.callback(ztproxy.stop)
        cookie = await sign_in(url, ZTPROXY_COOKIE)
        load(url, cookie, args, WARMUP_SECONDS)

        before = group_cpu_seconds(ztproxy.pid)
        report = parse_report(load(url, cookie, args, args.duration))
        cpu = group_cpu_seconds(ztproxy.pid) - before
        cpu_us = cpu / report.requests * 1e6
        print(f"clean run: {report.requests_per_second:,.0f} req/s, p50 {report.p50_ms:.2f} ms, "
              f"p99 {report.p99_ms:.2f} ms, {cpu_us:.0f} us of ztproxy CPU per request "
              f"({args.workers} workers, wrk -t{args.threads} -c{args.connections} -d{args.duration:g}s)")

        outputs = [workdir / f"worker-{pid}.txt" for pid in worker_pids(ztproxy.pid)]
        spies = []
        for pid, output in zip(worker_pids(ztproxy.pid), outputs, strict=True):
            argv = [args.py_spy, "record", "--pid", str(pid), "--rate", str(SAMPLE_RATE), "--format", "raw",
                    "--duration", str(int(args.duration)), "--output", str(output)]
            # Native stacks need the worker stopped while py-spy reads them (which slows it, not
            # what each sample shows); Python stacks are read without stopping it.
            argv.append("--nonblocking" if args.no_native else "--native")
            spies.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        time.sleep(1.0)  # py-spy attaches
        before = group_cpu_seconds(ztproxy.pid)
        profiled = parse_report(load(url, cookie, args, args.duration))
        profiled_cpu = group_cpu_seconds(ztproxy.pid) - before
        for spy in spies:
            _, err = spy.communicate(timeout=60)
            if spy.returncode != 0:
                print(f"py-spy failed: {err.decode(errors='replace')[-400:]}", file=sys.stderr)
                return 1
        components, leaves, total = read_collapsed(outputs)
        print(f"\nprofiled run: {profiled.requests_per_second:,.0f} req/s, {total:,} samples over {len(outputs)} "
              f"workers ({'native and Python' if not args.no_native else 'Python'} frames), "
              f"{total / profiled_cpu:.0f} samples per CPU second used (rate {SAMPLE_RATE}: "
              "near it, the samples are the CPU time)\n")
        print("| component (innermost frame that names one) | share | us/request |")
        print("| --- | ---: | ---: |")
        for name, count in components.most_common():
            print(f"| {name} | {count / total:.1%} | {count / total * cpu_us:.0f} |")
        print(f"| total | 100% | {cpu_us:.0f} |")
        print(f"\ninnermost frames, top {args.top}:\n")
        print("| frame | share | us/request |")
        print("| --- | ---: | ---: |")
        for frame, count in leaves.most_common(args.top):
            print(f"| `{frame[:110]}` | {count / total:.1%} | {count / total * cpu_us:.1f} |")
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            for output in outputs:
                shutil.copy(output, args.out / output.name)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which(args.py_spy) is None and not os.access(args.py_spy, os.X_OK):
        sys.exit(f"py-spy not found at {args.py_spy}: see this script's docstring")
    workdir = Path(tempfile.mkdtemp(prefix="ztproxy-profile-"))
    try:
        return asyncio.run(main_async(args, workdir))
    except TargetFailed as exc:
        print(f"profile_auth: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

"""The frame of the paired benchmarks (run_forward_auth.py, run_services.py): start, rounds, exit code.

``interleaved`` starts Redis and the upstream, lets the script start the rest (a ``World`` of
targets), then measures every target in interleaved rounds (every other round in reverse,
so running first or last favours none), counting whatever ``World.count`` counts around each
run. ``run_main`` parses the shared options, checks the tools and gives the exit status:
0 when every run was clean, even if a target FAILs (a benchmark is a report, not a gate).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path

import redis
from auth_world import LoadTarget, start_redis
from loadgen import WRK
from processes import TargetFailed
from run import WARMUP_SECONDS, log
from run_auth import AuthOutcome, RedisWatch, clean_result, measure, parse_args, run_load
from targets import NGINX, BenchEnv, find_python, find_ztproxy, start_upstream

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent

Rounds = dict[str, list[AuthOutcome]]


@dataclass
class World:
    targets: dict[str, LoadTarget]  # in the order the rounds measure them
    warm: tuple[str, ...] = ()  # loaded once before the rounds, so they count no first-time cost
    count: Callable[[], int] | None = None  # a running total read around each run (e.g. issuer calls)
    counted: dict[str, int] = field(default_factory=dict)  # per target: how much it grew during its runs


StartWorld = Callable[[AsyncExitStack, BenchEnv, int], Awaitable[World]]


async def interleaved(workdir: Path, args: argparse.Namespace, start: StartWorld, what: str,
                      report: Callable[[Rounds, World], None]) -> Rounds | None:
    """Start everything, measure the rounds, ``report`` them, stop everything; None if it could not start."""
    async with AsyncExitStack() as stack:
        try:
            redis_process, redis_port = start_redis(workdir)
            stack.callback(redis_process.stop)
            upstream, upstream_url = start_upstream(workdir)
            stack.callback(upstream.stop)
            env = BenchEnv(workdir=workdir, upstream_url=upstream_url, workers=args.workers,
                           python=find_python(REPO_ROOT), ztproxy=find_ztproxy(REPO_ROOT), bench_dir=BENCH_DIR)
            log(f"redis on port {redis_port}, upstream nginx at {upstream_url}; starting {what}")
            world = await start(stack, env, redis_port)
        except TargetFailed as exc:
            print(f"could not start: {exc}", file=sys.stderr)
            return None
        watch = RedisWatch(redis.Redis(port=redis_port, socket_timeout=5.0), redis_process.pid)
        stack.callback(watch.client.close)
        for name in world.warm:
            await asyncio.to_thread(run_load, world.targets[name], args, WARMUP_SECONDS)
        names = tuple(world.targets)
        rounds: Rounds = {name: [] for name in names}
        for number in range(args.rounds):
            log(f"round {number + 1} of {args.rounds}")
            for name in names if number % 2 == 0 else tuple(reversed(names)):
                before = world.count() if world.count else 0
                # In a thread: the loop stays free for what the world runs on it (a relay).
                rounds[name].append(await asyncio.to_thread(measure, world.targets[name], watch, args))
                if world.count:
                    world.counted[name] = world.counted.get(name, 0) + world.count() - before
        report(rounds, world)
    return rounds


def run_main(argv: list[str] | None, prefix: str, start: StartWorld, what: str,
             report: Callable[[Rounds, World], None]) -> int:
    args = parse_args(argv)
    missing = [tool for tool in (NGINX, WRK) if shutil.which(tool) is None]
    if missing:
        print(f"missing tools: {', '.join(missing)} (apt-get install -y nginx wrk)", file=sys.stderr)
        return 1
    log(f"wrk -t{args.threads} -c{args.connections} -d{args.duration:g}s; ztproxy with {args.workers} workers; "
        f"{args.rounds} rounds")
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        workdir = Path(tmp)
        workdir.chmod(0o711)  # nginx's workers may run as another user when started by root
        rounds = asyncio.run(interleaved(workdir, args, start, what, report))
    if rounds is None:
        return 1
    unclean = [run for runs in rounds.values() for run in runs
               if (result := clean_result(run)) is None or result.errors]
    return 1 if unclean else 0

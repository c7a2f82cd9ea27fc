"""Authenticated load benchmark: ztproxy's signed-in hot path against Caddy and Apache + mod_auth_openidc.

One invocation starts Redis, the nginx upstream of ``run.py``, a real OpenID Provider
(the demo IdP), ztproxy (Redis sessions, a signed-in route and a public route), Apache
with mod_auth_openidc (server-side sessions in the same Redis) and Caddy as a plain
reverse proxy (no authentication), all in front of that one upstream; signs in to both
authenticating proxies once through the IdP, then loads each target with wrk sending that
session cookie, in interleaved rounds, and judges issue 19's targets (point 6) on that
one run. Every response must be a 200 (a wrk script counts the others) and a probe
before and after each run must reach the upstream, so a run that measured sign-in
redirects shows as failed. Exit 0 when every run was clean, even if a target FAILs.

    .venv/bin/python bench/run_auth.py [--duration 10] [--connections 64] [--threads 2]
                                       [--workers 2] [--rounds 5] [--json results.json]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path

from apache import APACHE, ApacheMissing, check_installed
from caddy import CADDY, CaddyMissing, start_caddy
from caddy import check_installed as check_caddy_installed

try:
    import redis
    from auth_world import (
        BENCH_USER_AGENT,
        AuthWorld,
        LoadTarget,
        ProbeFailed,
        identity_location,
        probe,
        start_redis,
        start_world,
    )
except ModuleNotFoundError as missing:  # run by a python without the project installed
    sys.exit(f"run_auth.py needs the project's venv ({missing.name} is not installed here): "
             ".venv/bin/python bench/run_auth.py")
from loadgen import WRK, WrkFailed, WrkResult, parse_report, wrk_output
from processes import TargetFailed, group_cpu_seconds
from run import BUSY_SHARE, WARMUP_SECONDS, Outcome, cpu_busy_share, log, median_outcome
from run import _one_line as run_one_line
from targets import NGINX, BenchEnv, _describe_log, find_python, find_ztproxy, start_upstream

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
STATUS_SCRIPT = BENCH_DIR / "status_200.lua"
# caddy beside ztproxy-auth: the pair judged on req/s and p99 is measured seconds apart.
TARGET_NAMES = ("ztproxy-public", "ztproxy-auth", "caddy", "apache-public", "apache-oidc")
# Issue 19's targets (point 6), on one run of this machine.
MIN_RPS_MULTIPLE_OF_CADDY = 1.0
MAX_P99_MULTIPLE_OF_CADDY = 1.0  # no worse
MIN_RPS_MULTIPLE_OF_APACHE = 5.0
MAX_CPU_US_PER_REQUEST = 130.0
_NON_200_RE = re.compile(r"^Non-200 responses:\s+(\d+)", re.MULTILINE)
_FIRST_OTHER_RE = re.compile(r"^First non-200 status:\s+(\d+)", re.MULTILINE)


@dataclass
class AuthOutcome(Outcome):
    # During the measured run: Redis calls per command, and the CPU seconds used by the
    # target's process tree and by redis-server (a cost per request that a busy machine
    # blurs far less than req/s).
    redis_commands: dict[str, int] = field(default_factory=dict)
    cpu_seconds: float | None = None
    redis_cpu_seconds: float | None = None
    signs: float | None = None  # identity assertions ztproxy signed during the run

    def per_request(self, amount: float | None, scale: float = 1.0) -> str:
        if amount is None or self.result is None or not self.result.requests:
            return "-"
        return f"{scale * amount / self.result.requests:.{0 if scale > 1 else 3}f}"


@dataclass(frozen=True)
class RedisWatch:
    """The shared redis-server: a client for its counters, its PID for its CPU time."""

    client: redis.Redis
    pid: int


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measured run (10)")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (64)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (2)")
    parser.add_argument("--workers", type=int, default=2, help="ztproxy processes (2)")
    parser.add_argument("--rounds", type=int, default=5,
                        help="measure every target this many times, interleaved; report the median (5)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.duration <= 0 or args.workers < 1 or args.threads < 1 \
            or args.connections < args.threads:
        parser.error("need --rounds >= 1, --duration > 0, --workers >= 1, --threads >= 1, "
                     "--connections >= --threads")
    return args


def run_load(target: LoadTarget, args: argparse.Namespace, duration: float) -> tuple[str, int, int]:
    """wrk with the session cookie and the status-counting script: (report, non-200 count, first other)."""
    extra = ["-s", str(STATUS_SCRIPT)]
    if target.cookie:
        extra += ["-H", f"Cookie: {target.cookie}", "-H", f"User-Agent: {BENCH_USER_AGENT}"]
    for name, value in target.headers:
        extra += ["-H", f"{name}: {value}"]
    text = wrk_output(target.url, threads=args.threads, connections=args.connections, duration=duration,
                      extra_args=extra)
    non_200, first_other = _NON_200_RE.search(text), _FIRST_OTHER_RE.search(text)
    if non_200 is None or first_other is None:
        raise WrkFailed(f"the status script printed no count:\n{text.strip()[-500:]}")
    return text, int(non_200.group(1)), int(first_other.group(1))


def redis_calls(client: redis.Redis) -> dict[str, int]:
    stats = client.info("commandstats")
    # Our own INFO and CONFIG RESETSTAT are not the target's.
    return {name.removeprefix("cmdstat_"): int(entry["calls"]) for name, entry in stats.items()
            if not name.startswith(("cmdstat_info", "cmdstat_config"))}


def assertion_signs(metrics_url: str) -> float:
    """ztproxy's running total of signed assertions, summed over its workers."""
    with urllib.request.urlopen(metrics_url, timeout=5) as response:
        text = response.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("ztproxy_assertion_signs_total"))


def measure(target: LoadTarget, redis_watch: RedisWatch, args: argparse.Namespace) -> AuthOutcome:
    outcome = AuthOutcome(target.name)
    try:
        probe(target)
        run_load(target, args, WARMUP_SECONDS)
        redis_watch.client.config_resetstat()
        cpu_before = group_cpu_seconds(target.process.pid), group_cpu_seconds(redis_watch.pid)
        signs_before = assertion_signs(target.metrics_url) if target.metrics_url else None
        text, non_200, first_other = run_load(target, args, args.duration)
        if target.metrics_url and signs_before is not None:
            outcome.signs = assertion_signs(target.metrics_url) - signs_before
        outcome.cpu_seconds = group_cpu_seconds(target.process.pid) - cpu_before[0]
        outcome.redis_cpu_seconds = group_cpu_seconds(redis_watch.pid) - cpu_before[1]
        outcome.redis_commands = redis_calls(redis_watch.client)
        # Every status but 200 is an error here (wrk alone would count 3xx as success).
        outcome.result = dataclasses.replace(parse_report(text), non_2xx=non_200)
        if non_200:
            outcome.notes.append(f"{non_200} responses were not 200 (the first: {first_other})")
        probe(target)
        if not target.process.alive():
            outcome.error = f"{target.process.name} exited during the run"
    except ProbeFailed as exc:
        outcome.error = f"probe failed: {exc}"
    except WrkFailed as exc:
        outcome.error = f"wrk failed: {exc}"
    except redis.RedisError as exc:
        outcome.error = f"reading Redis' command counts failed: {exc}"
    log(f"{target.name}: {_one_line(outcome)}")
    return outcome


def _one_line(outcome: AuthOutcome) -> str:
    line = run_one_line(outcome)
    if outcome.result is None:
        return line
    signs = "" if outcome.signs is None else f", {outcome.per_request(outcome.signs)} signs"
    return (f"{line}, {outcome.per_request(sum(outcome.redis_commands.values()))} Redis commands and "
            f"{outcome.per_request(outcome.cpu_seconds, 1e6)} CPU us per request{signs}")


def _share(result: Outcome | None, reference: Outcome | None) -> str:
    if result is None or reference is None or result.result is None or reference.result is None:
        return "-"
    return f"{result.result.requests_per_second / reference.result.requests_per_second:.2f}x"


def checks(rounds: dict[str, list[AuthOutcome]]) -> list[str]:
    """Issue 19's PASS/FAIL lines. Against another target: the median of the round-by-round
    ratios (the two runs of a pair are measured in the same round, seconds apart); the CPU
    per request: the median of ztproxy-auth's clean rounds."""
    auth = rounds["ztproxy-auth"]
    goals: list[tuple[str, list[AuthOutcome], Callable[[WrkResult], float], Callable[[float], bool], str]] = [
        ("ztproxy-auth req/s >= caddy req/s", rounds["caddy"],
         _requests_per_second, lambda value: value >= MIN_RPS_MULTIPLE_OF_CADDY, "{:.2f}x caddy's"),
        ("ztproxy-auth p99 <= caddy p99", rounds["caddy"],
         _p99, lambda value: value <= MAX_P99_MULTIPLE_OF_CADDY, "{:.2f}x caddy's"),
        (f"ztproxy-auth req/s >= {MIN_RPS_MULTIPLE_OF_APACHE:g}x apache-oidc", rounds["apache-oidc"],
         _requests_per_second, lambda value: value >= MIN_RPS_MULTIPLE_OF_APACHE, "{:.2f}x apache-oidc's"),
    ]
    lines = []
    for goal, references, metric, met, shape in goals:
        ratios = [metric(run) / metric(reference) for run, reference in zip(map(clean_result, auth),
                                                                            map(clean_result, references),
                                                                            strict=True)
                  if run is not None and reference is not None]
        if not ratios:
            lines.append(f"{goal}: SKIP (no round measured both cleanly)")
            continue
        value = statistics.median(ratios)
        lines.append(f"{goal}: {'PASS' if met(value) else 'FAIL'} ({shape.format(value)}, "
                     f"{_basis(len(ratios), 'paired rounds')})")
    lines.append(cpu_check(auth))
    return lines


def cpu_check(runs: list[AuthOutcome]) -> str:
    """The CPU time ztproxy's processes spent per signed-in request, median of the clean rounds."""
    goal = f"ztproxy-auth CPU per request <= {MAX_CPU_US_PER_REQUEST:g} us"
    costs = [1e6 * run.cpu_seconds / result.requests for run in runs
             if (result := clean_result(run)) is not None and result.requests and run.cpu_seconds is not None]
    if not costs:
        return f"{goal}: SKIP (no round measured cleanly)"
    value = statistics.median(costs)
    verdict = "PASS" if value <= MAX_CPU_US_PER_REQUEST else "FAIL"
    return (f"{goal}: {verdict} ({value:.0f} us, {value / MAX_CPU_US_PER_REQUEST:.2f}x the bound, "
            f"{_basis(len(costs), 'rounds')})")


def _basis(count: int, what: str) -> str:
    return f"median of {count} {what}" if count > 1 else "one round"


def _requests_per_second(result: WrkResult) -> float:
    return result.requests_per_second


def _p99(result: WrkResult) -> float:
    return result.p99_ms


def clean_result(run: AuthOutcome) -> WrkResult | None:
    """The result of a run that measured what it should (every response a 200, both probes
    reached the upstream), else None. Socket errors are the target's behaviour under load:
    reported, but the run counts."""
    if run.error is None and run.result is not None and run.result.non_2xx == 0:
        return run.result
    return None


def print_table(outcomes: dict[str, AuthOutcome], references: dict[str, AuthOutcome | None], *,
                redis_cpu: bool = True) -> None:
    """One row per target: its median round, per-request costs, and its req/s over each reference's."""
    width = max(len(name) for name in outcomes) + 2
    redis_us_title = f"{'redis us/req':>13}" if redis_cpu else ""
    header = (f"{'target':<{width}}{'req/s':>9}{'p50 ms':>8}{'p99 ms':>8}{'errors':>7}{'redis/req':>10}"
              f"{'cpu us/req':>11}{redis_us_title}"
              + "".join(f"{'/' + label:>{len(label) + 3}}" for label in references))
    print()
    print(header)
    print("-" * len(header))
    for name, outcome in outcomes.items():
        r = outcome.result
        if r is None:
            print(f"{name:<{width}}{'-':>9}   (see below)")
            continue
        redis_us = f"{outcome.per_request(outcome.redis_cpu_seconds, 1e6):>13}" if redis_cpu else ""
        print(f"{name:<{width}}{r.requests_per_second:>9,.0f}{r.p50_ms:>8.2f}{r.p99_ms:>8.2f}{r.errors:>7}"
              f"{outcome.per_request(sum(outcome.redis_commands.values())):>10}"
              f"{outcome.per_request(outcome.cpu_seconds, 1e6):>11}{redis_us}"
              + "".join(f"{_share(outcome, reference):>{len(label) + 3}}" for label, reference in references.items()))


def report(world: AuthWorld, rounds: dict[str, list[AuthOutcome]], duration: float) -> list[str]:
    outcomes = {name: median_outcome(runs) for name, runs in rounds.items()}
    print_table(outcomes, {"ztp-public": outcomes["ztproxy-public"], "caddy": outcomes["caddy"],
                           "apache-oidc": outcomes["apache-oidc"]})
    print()
    for name, outcome in outcomes.items():
        for run in rounds[name]:
            if run.error:
                print(f"{name}: {run.error}")
        for note in outcome.notes:
            print(f"{name}: {note}")
        if outcome.redis_commands and outcome.result and outcome.result.requests:
            each = ", ".join(f"{command} {outcome.per_request(calls)} ({calls / duration:,.1f}/s)"
                             for command, calls in sorted(outcome.redis_commands.items(), key=lambda kv: -kv[1]))
            print(f"{name}: Redis commands per request: {each}")
    for target in world.targets.values():
        if target.identity is not None:
            seen = ", ".join(f"{name}={_short(value)}" for name, value in target.identity.items()) or "none"
            print(f"{target.name}: identity headers at the upstream: {seen}")
    signed = [o for o in rounds.get("ztproxy-auth", []) if o.signs is not None and o.result is not None]
    signs = sum(o.signs or 0 for o in signed)
    requests = sum(o.result.requests for o in signed if o.result is not None)
    per_request = f"{signs / requests:.6f} ({signs:.0f} signed for {requests:,} requests)" if requests else "-"
    print(f"ztproxy: {_describe_log(world.ztproxy_access_log)}; assertion signs per signed-in request: "
          f"{per_request}")
    lines = checks(rounds)
    print()
    for line in lines:
        print(line)
    return lines


def _short(value: str, limit: int = 40) -> str:
    return value if len(value) <= limit else f"{value[:limit]}... ({len(value)} chars)"


def machine() -> dict[str, str | int | None]:
    def version(argv: list[str], pattern: str) -> str | None:
        try:
            text = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False).stdout
        except (OSError, subprocess.TimeoutExpired):
            return None
        found = re.search(pattern, text)
        return found.group(1) if found else None

    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "apache": version([APACHE, "-v"], r"Apache/(\S+)"),
        "caddy": version([CADDY, "version"], r"v?(\d+\.\d+\.\d+\S*)"),
        "mod_auth_openidc": version(["dpkg-query", "-W", "-f=${Version}", "libapache2-mod-auth-openidc"], r"(\S+)"),
        "redis": version(["/usr/bin/redis-server", "--version"], r"v=(\S+)"),
        "wrk": version([WRK, "-v"], r"wrk (?:debian/)?(\S+)"),
    }


def run(args: argparse.Namespace) -> int:
    missing = [tool for tool in (NGINX, WRK) if shutil.which(tool) is None]
    if missing:
        print(f"missing tools: {', '.join(missing)} (apt-get install -y nginx-light wrk)", file=sys.stderr)
        return 1
    try:
        check_installed()
        check_caddy_installed()
    except (ApacheMissing, CaddyMissing) as exc:
        print(exc, file=sys.stderr)
        return 1
    facts = machine()
    log(f"{facts['cpus']} cpus; wrk -t{args.threads} -c{args.connections} -d{args.duration:g}s with the session "
        f"cookie; ztproxy with {args.workers} workers, Caddy {facts['caddy']} with GOMAXPROCS={args.workers}; "
        f"Apache {facts['apache']}, mod_auth_openidc {facts['mod_auth_openidc']}")
    busy = cpu_busy_share()
    if busy is not None and busy > BUSY_SHARE:
        log(f"warning: the cpus are {busy:.0%} busy before starting: other work shares them, "
            "the numbers will be noisy")
    with tempfile.TemporaryDirectory(prefix="ztproxy-bench-auth-") as tmp:
        workdir = Path(tmp)
        workdir.chmod(0o711)  # nginx and Apache children may run as another user when started by root
        rounds = asyncio.run(measure_rounds(workdir, args))
    if rounds is None:
        return 1
    print(f"machine: {facts['cpus']} cpus, {facts['platform']}, Python {facts['python']}, Caddy {facts['caddy']}, "
          f"Apache {facts['apache']}, mod_auth_openidc {facts['mod_auth_openidc']}, Redis {facts['redis']}, "
          f"wrk {facts['wrk']}")
    if args.json:
        write_json(args.json, args, facts, rounds, checks(rounds))
    unclean = [run for runs in rounds.values() for run in runs
               if (result := clean_result(run)) is None or result.errors]
    return 1 if unclean else 0


async def measure_rounds(workdir: Path, args: argparse.Namespace) -> dict[str, list[AuthOutcome]] | None:
    """Start everything, measure the rounds, print the report, stop everything; None if it could not start."""
    rounds: dict[str, list[AuthOutcome]] = {name: [] for name in TARGET_NAMES}
    async with AsyncExitStack() as stack:
        try:
            redis_process, redis_port = start_redis(workdir)
            stack.callback(redis_process.stop)
            upstream, upstream_url = start_upstream(workdir, identity_location())
            stack.callback(upstream.stop)
            env = BenchEnv(workdir=workdir, upstream_url=upstream_url, workers=args.workers,
                           python=find_python(REPO_ROOT), ztproxy=find_ztproxy(REPO_ROOT), bench_dir=BENCH_DIR)
            log(f"redis on port {redis_port}, upstream nginx at {upstream_url}; starting the IdP, "
                "ztproxy, Apache and Caddy, signing in to ztproxy and Apache")
            world = with_caddy(await start_world(stack, env, redis_port), stack, env)
        except TargetFailed as exc:
            print(f"could not start: {exc}", file=sys.stderr)
            return None
        redis_watch = RedisWatch(redis.Redis(port=redis_port, socket_timeout=5.0), redis_process.pid)
        stack.callback(redis_watch.client.close)
        for number in range(args.rounds):
            log(f"round {number + 1} of {args.rounds}")
            # Every other round in reverse: running first or last favours no target.
            order = TARGET_NAMES if number % 2 == 0 else tuple(reversed(TARGET_NAMES))
            for name in order:
                rounds[name].append(measure(world.targets[name], redis_watch, args))
        report(world, rounds, args.duration)
    return rounds


def with_caddy(world: AuthWorld, stack: AsyncExitStack, env: BenchEnv) -> AuthWorld:
    """``world`` and Caddy (stopped by ``stack``) proxying to the same upstream, loaded with
    ztproxy's session cookie so that its requests carry the same headers as ztproxy-auth's."""
    process, url = start_caddy(env.workdir, env.upstream_url, env.workers)
    stack.callback(process.stop)
    caddy = LoadTarget("caddy", url + "/", world.targets["ztproxy-auth"].cookie, process)
    return dataclasses.replace(world, targets={**world.targets, caddy.name: caddy})


def write_json(path: Path, args: argparse.Namespace, facts: dict[str, str | int | None],
               rounds: dict[str, list[AuthOutcome]], lines: list[str]) -> None:
    document = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": facts,
        "settings": {"duration": args.duration, "warmup": WARMUP_SECONDS, "connections": args.connections,
                     "threads": args.threads, "workers": args.workers, "rounds": args.rounds},
        "rounds": {name: [{"error": run.error, "notes": run.notes, "redis_commands": run.redis_commands,
                           "cpu_seconds": run.cpu_seconds, "redis_cpu_seconds": run.redis_cpu_seconds,
                           "result": dataclasses.asdict(run.result) if run.result else None} for run in runs]
                   for name, runs in rounds.items()},
        "checks": lines,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # unwinds the exit stack, which stops every process we started


def main(argv: list[str] | None = None) -> int:
    # Our own handler for both: asyncio.run then leaves SIGINT alone (it would only cancel the
    # main task at its next await, after the current wrk runs), so Ctrl-C stops at once.
    signal.signal(signal.SIGTERM, _interrupted)
    signal.signal(signal.SIGINT, _interrupted)
    return run(parse_args(argv))


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # the exit stack has stopped every process by now
        sys.exit(130)

"""Load benchmark: ztproxy against nginx and a bare aiohttp forwarder, all on loopback.

One invocation starts an nginx upstream, then for each target (one at a time) starts it,
runs a wrk warm-up and the measured wrk run, stops it, and finally prints a table with
ratios to ``bare`` (the ceiling of a Python proxy here) and to ``nginx``. It exits 0 when
every target ran without errors, even if a performance target FAILs: it is a report.

    python bench/run.py [--duration 10] [--connections 64] [--threads 2] [--workers 2]
                        [--rounds 5] [--only direct,nginx,bare,ztproxy] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from loadgen import WRK, WrkFailed, WrkResult, run_wrk
from processes import ManagedProcess, TargetFailed
from targets import NGINX, PYTHON_PROXIES, TARGETS, BenchEnv, find_python, find_ztproxy, start_upstream

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
WARMUP_SECONDS = 2.0
# The targets for ztproxy, relative to the bare forwarder.
MIN_RPS_SHARE_OF_BARE = 0.85
MAX_P99_MULTIPLE_OF_BARE = 1.5
# Above this share of cpu time used before we start, something else competes with the run.
BUSY_SHARE = 0.2


@dataclass
class Outcome:
    name: str
    result: WrkResult | None = None
    error: str | None = None
    notes: list[str] = field(default_factory=list)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measured run (10)")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (64)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (2)")
    parser.add_argument("--workers", type=int, default=2, help="processes of the Python proxies (2)")
    parser.add_argument("--only", type=_target_list, default=list(TARGETS),
                        help=f"comma-separated subset of {','.join(TARGETS)}")
    parser.add_argument("--rounds", type=int, default=5,
                        help="measure every target this many times, interleaved; report the median (5)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("need --rounds >= 1")
    if args.duration <= 0 or args.workers < 1 or args.threads < 1 or args.connections < args.threads:
        parser.error("need --duration > 0, --workers >= 1, --threads >= 1, --connections >= --threads")
    return args


def _target_list(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in TARGETS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown target(s) {unknown}; choose from {','.join(TARGETS)}")
    return [name for name in TARGETS if name in names]  # always run in the canonical order


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def cpu_busy_share(interval: float = 0.5) -> float | None:
    """Share of all cpus' time spent busy over ``interval`` (from /proc/stat; None elsewhere)."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat", encoding="ascii") as stat:
            ticks = [int(n) for n in stat.readline().split()[1:]]
        idle = ticks[3] + ticks[4]  # idle + iowait
        return sum(ticks) - idle, sum(ticks)

    try:
        busy_before, total_before = sample()
        time.sleep(interval)
        busy_after, total_after = sample()
    except (OSError, ValueError, IndexError):
        return None
    elapsed = total_after - total_before
    return (busy_after - busy_before) / elapsed if elapsed else None


def measure(name: str, env: BenchEnv, args: argparse.Namespace) -> Outcome:
    outcome = Outcome(name)
    running = None
    try:
        log(f"{name}: starting")
        running = TARGETS[name](env)
        outcome.notes.extend(running.notes)
        log(f"{name}: warm-up {WARMUP_SECONDS:g}s at {running.url}")
        run_wrk(running.url, threads=args.threads, connections=args.connections, duration=WARMUP_SECONDS)
        log(f"{name}: measuring {args.duration:g}s")
        outcome.result = run_wrk(running.url, threads=args.threads, connections=args.connections,
                                 duration=args.duration)
        for process in running.processes:
            if not process.alive():
                outcome.notes.append(f"warning: {process.name} exited during the run")
    except TargetFailed as exc:
        outcome.error = f"failed to start: {exc}"
    except WrkFailed as exc:
        outcome.error = f"wrk failed: {exc}"
    finally:
        if running is not None:
            running.stop()
            outcome.notes.extend(running.describe())
    log(f"{name}: {_one_line(outcome)}")
    return outcome


def _one_line(outcome: Outcome) -> str:
    if outcome.result is None:
        return (outcome.error or "not run").splitlines()[0]
    r = outcome.result
    return (f"{r.requests_per_second:,.0f} req/s, p50 {r.p50_ms:.2f} ms, p99 {r.p99_ms:.2f} ms, "
            f"{r.errors} errors")


def _ratios(result: WrkResult, reference: WrkResult | None) -> tuple[str, str]:
    """req/s as a share of the reference's, p99 as a multiple of the reference's."""
    if reference is None or not reference.requests_per_second or not reference.p99_ms:
        return "-", "-"
    return (f"{100 * result.requests_per_second / reference.requests_per_second:.0f}%",
            f"{result.p99_ms / reference.p99_ms:.2f}x")


def paired_ratios(ztproxy: list[Outcome], bare: list[Outcome]) -> tuple[float, float] | None:
    """Median over rounds of ztproxy/bare (req/s share, p99 multiple), each round's ztproxy run
    paired with that round's bare run: neighbours in time share the machine's mood."""
    pairs = [(z.result, b.result) for z, b in zip(ztproxy, bare, strict=False) if z.result and b.result]
    if len(pairs) < 2:
        return None
    shares = sorted(z.requests_per_second / b.requests_per_second for z, b in pairs)
    multiples = sorted(z.p99_ms / b.p99_ms for z, b in pairs)
    return shares[len(shares) // 2], multiples[len(multiples) // 2]


def report(outcomes: list[Outcome], paired: tuple[float, float] | None = None) -> list[str]:
    """The table, the notes and the PASS/FAIL lines; returns the check lines too."""
    by_name = {o.name: o.result for o in outcomes}
    bare, nginx = by_name.get("bare"), by_name.get("nginx")
    header = (f"{'target':<9}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}"
              f"{'% bare':>9}{'p99/bare':>10}{'% nginx':>9}{'p99/nginx':>11}")
    print()
    print(header)
    print("-" * len(header))
    for outcome in outcomes:
        r = outcome.result
        if r is None:
            print(f"{outcome.name:<9}{'-':>10}{'-':>9}{'-':>9}{'-':>8}   (see below)")
            continue
        # Only the Python proxies are compared with the bare forwarder; everything with nginx.
        bare_share, bare_p99 = _ratios(r, bare if outcome.name in PYTHON_PROXIES else None)
        nginx_share, nginx_p99 = _ratios(r, nginx)
        print(f"{outcome.name:<9}{r.requests_per_second:>10,.0f}{r.p50_ms:>9.2f}{r.p99_ms:>9.2f}{r.errors:>8}"
              f"{bare_share:>9}{bare_p99:>10}{nginx_share:>9}{nginx_p99:>11}")
    print()
    for outcome in outcomes:
        if outcome.error:
            print(f"{outcome.name}: {outcome.error}")
        for note in outcome.notes:
            print(f"{outcome.name}: {note}")
        if outcome.result and outcome.result.errors:
            r = outcome.result
            print(f"{outcome.name}: {r.non_2xx} error responses, {r.socket_errors} socket errors")
    checks = _checks(by_name.get("ztproxy"), bare, paired)
    print()
    for line in checks:
        print(line)
    return checks


def _checks(ztproxy: WrkResult | None, bare: WrkResult | None,
            paired: tuple[float, float] | None = None) -> list[str]:
    rps_goal = f"ztproxy req/s >= {MIN_RPS_SHARE_OF_BARE:.0%} of bare"
    p99_goal = f"ztproxy p99 <= {MAX_P99_MULTIPLE_OF_BARE:g}x bare p99"
    if ztproxy is None or bare is None:
        return [f"{rps_goal}: SKIP (not measured)", f"{p99_goal}: SKIP (not measured)"]
    # With several rounds the checks use the median of the round-by-round ratios.
    share, multiple = paired or (ztproxy.requests_per_second / bare.requests_per_second,
                                 ztproxy.p99_ms / bare.p99_ms)
    basis = " median of paired rounds" if paired else ""
    return [
        f"{rps_goal}: {'PASS' if share >= MIN_RPS_SHARE_OF_BARE else 'FAIL'} ({share:.1%}{basis})",
        f"{p99_goal}: {'PASS' if multiple <= MAX_P99_MULTIPLE_OF_BARE else 'FAIL'} ({multiple:.2f}x{basis})",
    ]


def write_json(path: Path, args: argparse.Namespace, outcomes: list[Outcome], checks: list[str]) -> None:
    document = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
        "settings": {"duration": args.duration, "warmup": WARMUP_SECONDS, "connections": args.connections,
                     "threads": args.threads, "workers": args.workers,
                     # Unbuffered stdout makes every access log line its own write().
                     "PYTHONUNBUFFERED": os.environ.get("PYTHONUNBUFFERED", "")},
        "targets": [{"name": o.name, "error": o.error, "notes": o.notes,
                     "result": asdict(o.result) if o.result else None} for o in outcomes],
        "checks": checks,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")


def median_outcome(runs: list[Outcome]) -> Outcome:
    """The run with the median req/s; a failed run fails the target."""
    failed = [run for run in runs if run.result is None]
    if failed:
        return failed[0]
    ordered = sorted(runs, key=lambda run: run.result.requests_per_second if run.result else 0.0)
    chosen = ordered[len(ordered) // 2]
    if len(runs) > 1:
        each = ", ".join(f"{run.result.requests_per_second:,.0f}" for run in runs if run.result)
        chosen.notes.append(f"req/s per round: {each} (median reported)")
    return chosen


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    missing = [tool for tool in (NGINX, WRK) if shutil.which(tool) is None]
    if missing:
        print(f"missing tools: {', '.join(missing)} (apt-get install -y nginx-light wrk)", file=sys.stderr)
        return 1
    log(f"{os.cpu_count()} cpus; wrk -t{args.threads} -c{args.connections} -d{args.duration:g}s; "
        f"python proxies with {args.workers} workers; targets {','.join(args.only)}")
    busy = cpu_busy_share()
    if busy is not None and busy > BUSY_SHARE:
        log(f"warning: the cpus are {busy:.0%} busy before starting: other work shares them, "
            "the numbers will be noisy")
    outcomes: list[Outcome] = []
    paired: tuple[float, float] | None = None
    upstream: ManagedProcess | None = None
    with tempfile.TemporaryDirectory(prefix="ztproxy-bench-") as tmp:
        workdir = Path(tmp)
        workdir.chmod(0o711)  # nginx workers may run as another user when started by root
        try:
            upstream, upstream_url = start_upstream(workdir)
            log(f"upstream nginx at {upstream_url}")
            env = BenchEnv(workdir=workdir, upstream_url=upstream_url, workers=args.workers,
                           python=find_python(REPO_ROOT), ztproxy=find_ztproxy(REPO_ROOT),
                           bench_dir=BENCH_DIR)
            # Interleaved rounds: a noisy minute on a shared VM hits every target alike.
            rounds: dict[str, list[Outcome]] = {name: [] for name in args.only}
            for number in range(args.rounds):
                log(f"round {number + 1} of {args.rounds}")
                # Every other round runs the targets in reverse, so running first or last
                # (a warmer cache, a CPU-credit dip) favours no target.
                order = args.only if number % 2 == 0 else list(reversed(args.only))
                for name in order:
                    rounds[name].append(measure(name, env, args))
            outcomes = [median_outcome(runs) for runs in rounds.values()]
            paired = paired_ratios(rounds.get("ztproxy", []), rounds.get("bare", []))
        except TargetFailed as exc:
            print(f"upstream: failed to start: {exc}", file=sys.stderr)
            return 1
        finally:
            if upstream is not None:
                upstream.stop()
    checks = report(outcomes, paired)
    if args.json:
        write_json(args.json, args, outcomes, checks)
    failed = [o.name for o in outcomes if o.result is None or o.result.errors]
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # the finally blocks have stopped every process by now
        sys.exit(130)

"""Fault report: how ztproxy weathers the faults of its dependencies, one row per fault.

Runs the scenarios of ``tests/support/fault_scenarios.py`` on real processes on 127.0.0.1:
Redis killed and restarted, Redis frozen, a Sentinel failover, the IdP down, an upstream
that never answers, SIGTERM under load. Each scenario drives a small load (4 tasks) while
the dependency breaks and comes back; ``--network impaired`` (or ``both``) runs them again
with the IdP, Redis and the upstreams behind relays that add 50-300 ms of jittered
latency, split every write into 64-byte segments and reset 2% or drop 1% of what clients
send (``tests/support/relay.py``).

    .venv/bin/python bench/faults.py                       # the benchmark: 20 s outages, about 4 minutes
    .venv/bin/python bench/faults.py --smoke               # a few seconds a fault (the test suite's run)
    .venv/bin/python bench/faults.py --smoke --network both --only idp-down,sigterm
    .venv/bin/python bench/faults.py --keep /tmp/faults    # keep configs and logs there

One verdict line per fault on stdout (PASS or FAIL and why), then the table. Columns:
requests sent; wrongly allowed (a 200 that must never be: anonymous or revoked on a
protected route, or signed-in from a local copy older than cache_ttl while the store is
gone); fail-closed (the refusals the fault calls for: 503, 504, refused connections, and
on an impaired network the 502/503/504 it may cause at any time); failed (any other answer
that is not the normal one); hangs (slower than the configured bound); stranded (sign-ins
sent to a stopped IdP later than the bound ztproxy states); recovery (from the
dependency's return to the first normal answer); slowest request; the scenario's checks.
Needs redis-server, redis-sentinel and Node.js with the project's node_modules (the demo
IdP). Exit status 1 when any fault was not weathered: a request wrongly allowed, failed,
hung or stranded, or a failed check.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # the scenarios live with the tests

from tests.support.fault_scenarios import OWN_LAB_SCENARIOS, SHARED_WORLD_SCENARIOS, run_all  # noqa: E402
from tests.support.faults import LONG, SMOKE, FaultReport  # noqa: E402
from tests.support.relay import Impairments  # noqa: E402

NAMES = [*SHARED_WORLD_SCENARIOS, *OWN_LAB_SCENARIOS]
NETWORKS = {"plain": None, "impaired": Impairments()}
HEADER = ("fault", "network", "requests", "wrongly allowed", "fail-closed", "failed", "hangs", "stranded",
          "recovery", "slowest", "checks")


def verdict(report: FaultReport, network: str) -> str:
    """One line: PASS or FAIL, the fault, and the counts that decide it."""
    problems = report.problems
    recovery = "" if report.recovery_s is None else f"; recovered in {report.recovery_s:.2f}s"
    return (f"{'FAIL' if problems else 'PASS'} {report.fault} ({network} network): "
            + ("; ".join(problems) if problems else
               f"{report.wrongly_allowed} wrongly allowed, {report.failed} failed, {report.hangs} hung, "
               f"{report.stranded} stranded of {report.requests} requests{recovery}"))


def row(report: FaultReport, network: str) -> tuple[str, ...]:
    failing = [name for name, ok in report.checks.items() if not ok]
    return (report.fault, network, str(report.requests), str(report.wrongly_allowed), str(report.fail_closed),
            str(report.failed), str(report.hangs), str(report.stranded),
            "-" if report.recovery_s is None else f"{report.recovery_s:.2f}s", f"{report.slowest_s:.2f}s",
            "ok" if not failing else "FAILED: " + ", ".join(failing))


def table(reports: list[tuple[FaultReport, str]]) -> str:
    rows = [HEADER, *(row(report, network) for report, network in reports)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
    lines = ["| " + " | ".join(cell.ljust(width) for cell, width in zip(r, widths, strict=True)) + " |"
             for r in rows]
    lines.insert(1, "|" + "|".join("-" * (width + 2) for width in widths) + "|")
    notes = [f"- {report.fault} ({network}): {report.notes}" for report, network in reports if report.notes]
    return "\n".join(lines + (["", *notes] if notes else []))


async def main(args: argparse.Namespace, workdir: Path) -> int:
    reports: list[tuple[FaultReport, str]] = []
    pace = SMOKE if args.smoke else LONG
    for network in args.networks:
        async for report in run_all(workdir / network, args.names, pace=pace, network=NETWORKS[network]):
            print(verdict(report, network), flush=True)
            print(f"  {report.line()}", file=sys.stderr, flush=True)
            if report.problems:
                print(f"  answers: {report.breakdown}", file=sys.stderr, flush=True)
            reports.append((report, network))
    print()
    print(table(reports))
    return 1 if any(report.problems for report, _ in reports) else 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--only", default=",".join(NAMES),
                        help=f"comma-separated faults to run, from: {', '.join(NAMES)} (default: all)")
    parser.add_argument("--smoke", action="store_true",
                        help=f"a few seconds a fault ({SMOKE.outage:g} s outages) instead of the benchmark's "
                             f"{LONG.outage:g} s")
    parser.add_argument("--network", choices=[*NETWORKS, "both"], default="plain",
                        help="plain loopback (default), the impaired network, or both one after the other")
    parser.add_argument("--keep", type=Path, help="work in this directory and keep its configs and logs")
    args = parser.parse_args(argv)
    args.names = [name.strip() for name in args.only.split(",") if name.strip()]
    args.networks = list(NETWORKS) if args.network == "both" else [args.network]
    unknown = sorted(set(args.names) - set(NAMES))
    if unknown:
        parser.error(f"unknown fault {unknown[0]!r}; known: {', '.join(NAMES)}")
    return args


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.keep is not None:
        arguments.keep.mkdir(parents=True, exist_ok=True)
        sys.exit(asyncio.run(main(arguments, arguments.keep)))
    with tempfile.TemporaryDirectory(prefix="ztproxy-faults-") as temporary:
        sys.exit(asyncio.run(main(arguments, Path(temporary))))

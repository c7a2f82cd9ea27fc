"""Fault report: how ztproxy weathers the faults of its dependencies, one row per fault.

Runs the scenarios of ``tests/integration/test_faults.py`` (the very same functions, outside
pytest) on real processes on 127.0.0.1: Redis killed and restarted, Redis frozen, a Sentinel
failover, the IdP down, an upstream that never answers, SIGTERM under load. Each scenario
drives a small load (4 tasks, a few seconds) while the dependency breaks and comes back.

    .venv/bin/python bench/faults.py                       # all six, about a minute
    .venv/bin/python bench/faults.py --only idp-down,sigterm
    .venv/bin/python bench/faults.py --keep /tmp/faults    # keep configs and logs there

Columns: requests sent; wrongly allowed (a 200 that must never be: anonymous or revoked on a
protected route, or signed-in from a local copy older than cache_ttl while the store is
gone; must be 0); fail-closed (the refusals the fault calls for: 503, 504, refused
connections); failed (any other answer that is not the normal one); hangs (slower than the
configured bound); recovery (from the dependency's return to the first normal answer);
slowest request; the scenario's checks. Needs redis-server, redis-sentinel and Node.js with
the project's node_modules (the demo IdP). Exit status 0 when every fault was weathered,
1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # the scenarios live with the tests

from tests.integration.test_faults import OWN_LAB_SCENARIOS, SHARED_WORLD_SCENARIOS, run_all  # noqa: E402
from tests.support.faults import FaultReport  # noqa: E402

NAMES = [*SHARED_WORLD_SCENARIOS, *OWN_LAB_SCENARIOS]
HEADER = ("fault", "requests", "wrongly allowed", "fail-closed", "failed", "hangs", "recovery", "slowest", "checks")


def row(report: FaultReport) -> tuple[str, ...]:
    failing = [name for name, ok in report.checks.items() if not ok]
    return (report.fault, str(report.requests), str(report.wrongly_allowed), str(report.fail_closed),
            str(report.failed), str(report.hangs),
            "-" if report.recovery_s is None else f"{report.recovery_s:.2f}s", f"{report.slowest_s:.2f}s",
            "ok" if not failing else "FAILED: " + ", ".join(failing))


def table(reports: list[FaultReport]) -> str:
    rows = [HEADER, *(row(report) for report in reports)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
    lines = ["| " + " | ".join(cell.ljust(width) for cell, width in zip(r, widths, strict=True)) + " |"
             for r in rows]
    lines.insert(1, "|" + "|".join("-" * (width + 2) for width in widths) + "|")
    notes = [f"- {report.fault}: {report.notes}" for report in reports if report.notes]
    return "\n".join(lines + (["", *notes] if notes else []))


async def main(names: list[str], workdir: Path) -> int:
    reports: list[FaultReport] = []
    async for report in run_all(workdir, names):
        print(report.line(), file=sys.stderr, flush=True)  # progress
        if report.problems:
            print(f"  answers: {report.breakdown}", file=sys.stderr)
        reports.append(report)
    print(table(reports))
    return 1 if any(report.problems for report in reports) else 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--only", default=",".join(NAMES),
                        help=f"comma-separated faults to run, from: {', '.join(NAMES)} (default: all)")
    parser.add_argument("--keep", type=Path, help="work in this directory and keep its configs and logs")
    args = parser.parse_args(argv)
    args.names = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(args.names) - set(NAMES))
    if unknown:
        parser.error(f"unknown fault {unknown[0]!r}; known: {', '.join(NAMES)}")
    return args


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.keep is not None:
        arguments.keep.mkdir(parents=True, exist_ok=True)
        sys.exit(asyncio.run(main(arguments.names, arguments.keep)))
    with tempfile.TemporaryDirectory(prefix="ztproxy-faults-") as temporary:
        sys.exit(asyncio.run(main(arguments.names, Path(temporary))))

"""Micro-benchmark: RouteTable.match() must cost the same with 10 routes or 10,000.

Run as ``python bench/bench_routing.py``. Builds tables of 10, 100, 1,000 and 10,000
routes (exact hosts, wildcards, path prefixes, any-host routes), times the same fixed
set of lookups against each with timeit (best of several repeats), prints ns per match,
and exits 1 when the 10,000-route case is more than MAX_RATIO times slower than the
10-route case, so it doubles as a check. Not a pytest test: timings belong to a quiet
machine, not to CI's shared runners.
"""

from __future__ import annotations

import sys
import timeit
from collections.abc import Callable
from functools import partial
from pathlib import Path

try:
    from ztproxy.routing import RouteTable
except ImportError:  # run from a checkout without an installed package
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from ztproxy.routing import RouteTable

SIZES = (10, 100, 1_000, 10_000)
MAX_RATIO = 2.0
REPEATS = 15
ROUNDS = 2_000  # calls of the whole lookup set per repeat

Entry = tuple[str | None, str, str]

# (host, canonical path, expected value): every size holds routes 0-9, so the work per
# lookup is the same in every table and only the table size changes.
LOOKUPS: tuple[tuple[str | None, str, str | None], ...] = (
    ("app0.corp.example", "/", "exact-0"),
    ("app4.corp.example", "/docs/guide/install/linux", "exact-4"),
    ("build.team1.corp.example", "/svc1/pipelines/42/logs", "wildcard-1"),
    ("a.b.team5.corp.example", "/svc5", "wildcard-5"),
    ("shared2.corp.example", "/tenant2/api/v1/items/7", "prefix-2"),
    ("shared6.corp.example", "/tenant6/api", "prefix-6"),
    ("unknown.example", "/global3/status", "any-3"),
    (None, "/global7/", "any-7"),
    ("nobody.example", "/nothing/here/at/all", None),
    ("app0.corp.example.evil", "/", None),
)


def build_entries(size: int) -> list[Entry]:
    """A deterministic mix: a quarter each of exact hosts, wildcards, prefixes, any-host."""
    entries: list[Entry] = []
    for i in range(size):
        kind = i % 4
        if kind == 0:
            entries.append((f"app{i}.corp.example", "/", f"exact-{i}"))
        elif kind == 1:
            entries.append((f"*.team{i}.corp.example", f"/svc{i}", f"wildcard-{i}"))
        elif kind == 2:
            entries.append((f"shared{i % 50}.corp.example", f"/tenant{i}/api", f"prefix-{i}"))
        else:
            entries.append((None, f"/global{i}", f"any-{i}"))
    return entries


def check(table: RouteTable[str], size: int) -> None:
    for host, path, expected in LOOKUPS:
        found = table.match(host, path)
        if found != expected:
            sys.exit(f"size {size}: match({host!r}, {path!r}) = {found!r}, expected {expected!r}")


def lookup_loop(table: RouteTable[str]) -> Callable[[], None]:
    match = table.match
    lookups = [(host, path) for host, path, _ in LOOKUPS]

    def run() -> None:
        for host, path in lookups:
            match(host, path)

    return run


def main() -> int:
    tables: dict[int, RouteTable[str]] = {}
    build_ms: dict[int, float] = {}
    for size in SIZES:
        entries = build_entries(size)
        build_ms[size] = min(timeit.repeat(partial(RouteTable, entries), number=1, repeat=3)) * 1e3
        tables[size] = RouteTable(entries)
        check(tables[size], size)
    # Sizes are interleaved within each repeat, so a burst of load on a shared machine
    # hits every size alike instead of skewing the ratio; the best repeat counts.
    loops = {size: lookup_loop(table) for size, table in tables.items()}
    best = dict.fromkeys(SIZES, float("inf"))
    for _ in range(REPEATS):
        for size, loop in loops.items():
            best[size] = min(best[size], timeit.timeit(loop, number=ROUNDS))
    ns = {size: best[size] / (ROUNDS * len(LOOKUPS)) * 1e9 for size in SIZES}

    print(f"{'routes':>8}  {'build ms':>9}  {'ns/match':>9}")
    for size in SIZES:
        print(f"{size:>8}  {build_ms[size]:>9.2f}  {ns[size]:>9.1f}")
    ratio = ns[SIZES[-1]] / ns[SIZES[0]]
    verdict = "ok" if ratio <= MAX_RATIO else f"FAIL (limit {MAX_RATIO})"
    print(f"ratio {SIZES[-1]:,} / {SIZES[0]:,} routes: {ratio:.2f}  {verdict}")
    return 0 if ratio <= MAX_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())

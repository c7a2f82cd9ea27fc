"""Drive wrk and read its report: requests/s, latency percentiles, errors.

wrk's "Non-2xx or 3xx responses" line counts responses with status >= 400; the
harness also checks beforehand that each target answers 200, so any count there is an
error response under load.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

WRK = "wrk"
# wrk is started with a fixed duration; this bounds it if it hangs anyway.
WRK_GRACE = 30.0

_TIME_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_PERCENTILE_RE = re.compile(r"^\s*(50|75|90|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.MULTILINE)
_RPS_RE = re.compile(r"^Requests/sec:\s+([\d.]+)", re.MULTILINE)
_REQUESTS_RE = re.compile(r"^\s*(\d+) requests in ", re.MULTILINE)
_NON_2XX_RE = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_SOCKET_ERRORS_RE = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")


class WrkFailed(Exception):
    """wrk did not run, or printed no report we can read."""


@dataclass(frozen=True)
class WrkResult:
    requests: int
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int

    @property
    def errors(self) -> int:
        return self.non_2xx + self.socket_errors


def run_wrk(url: str, *, threads: int, connections: int, duration: float) -> WrkResult:
    """One ``wrk -t -c -d --latency`` run against ``url``."""
    return parse_report(wrk_output(url, threads=threads, connections=connections, duration=duration))


def wrk_output(url: str, *, threads: int, connections: int, duration: float,
               extra_args: Sequence[str] = ()) -> str:
    """What one ``wrk -t -c -d --latency [extra_args]`` run against ``url`` prints."""
    argv = [WRK, "-t", str(threads), "-c", str(connections), "-d", f"{duration:g}s", "--latency",
            *extra_args, url]
    try:
        completed = subprocess.run(argv, capture_output=True, text=True, timeout=duration + WRK_GRACE,
                                   check=False, stdin=subprocess.DEVNULL)
    except OSError as exc:
        raise WrkFailed(f"cannot run {WRK}: {exc.strerror}") from exc
    except subprocess.TimeoutExpired as exc:
        raise WrkFailed(f"{WRK} still running {duration + WRK_GRACE:.0f}s after start") from exc
    if completed.returncode != 0:
        raise WrkFailed(f"{WRK} exited with {completed.returncode}: {completed.stderr.strip()[-500:]}")
    return completed.stdout


def parse_report(text: str) -> WrkResult:
    """Read what ``wrk --latency`` prints: ``N requests in``, ``Requests/sec:``, the
    ``Latency Distribution`` block (``99%   12.34ms``, in us/ms/s/m/h) and, only when not
    zero, the ``Socket errors:`` and ``Non-2xx or 3xx responses:`` lines."""
    rps = _RPS_RE.search(text)
    requests = _REQUESTS_RE.search(text)
    percentiles = {int(p): float(value) * _TIME_UNITS_MS[unit]
                   for p, value, unit in _PERCENTILE_RE.findall(text)}
    if rps is None or requests is None or 50 not in percentiles or 99 not in percentiles:
        raise WrkFailed(f"unreadable wrk report:\n{text.strip()[-800:]}")
    non_2xx = _NON_2XX_RE.search(text)
    socket_errors = _SOCKET_ERRORS_RE.search(text)
    return WrkResult(
        requests=int(requests.group(1)),
        requests_per_second=float(rps.group(1)),
        p50_ms=percentiles[50],
        p99_ms=percentiles[99],
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(n) for n in socket_errors.groups()) if socket_errors else 0,
    )

"""Micro-benchmark: ztproxy's own per-request work around the stages, in one process.

Run as ``python bench/bench_request_work.py`` with a checkout's venv; run it with two
checkouts' venvs in turn to compare them. It times, best of several repeats, the work
every proxied request does outside the stages that decide (issue 19, steps 3-5):

- ``access``: ``AccessLogger.log`` for a request the pipeline took in, its JSON line
  into the (batched) log sink, as aiohttp calls it once the answer is out;
- ``hygiene``: a browser's request headers cleaned for the upstream, and an nginx answer's
  headers for the client (``upstream_request_headers``, ``downstream_response_headers``);
- ``driver``: the pipeline driver around one stage and a handler that answer at once
  (request id, record, context variable, metrics).

CPU nanoseconds per call, from ``time.process_time`` over many calls: the best repeat is
the one least disturbed by other processes on a shared machine. Not a pytest test:
timings belong to a machine at rest, not to CI's shared runners.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

try:
    import ztproxy  # noqa: F401
except ImportError:  # run from a checkout without an installed package
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ztproxy.context import RequestContext, endpoints_route
from ztproxy.headers import (
    DROP_PROTECTED,
    downstream_response_headers,
    forwarded_for,
    header_rules,
    upstream_request_headers,
)
from ztproxy.pipeline import build_pipeline
from ztproxy.policy.model import Decision, Outcome
from ztproxy.routing import parse_target
from ztproxy.state import RECORD, RequestRecord
from ztproxy.telemetry import LOG_SINK, AccessLogger, configure_logging

REPEATS = 15
CALLS = 20_000  # per repeat

BROWSER_HEADERS = CIMultiDict([
    ("Host", "wiki.corp.example"), ("User-Agent", "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Firefox/128.0"),
    ("Accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
    ("Accept-Language", "en-GB,en;q=0.5"), ("Accept-Encoding", "gzip, deflate, br"),
    ("Cookie", "ztproxy_session=" + "s" * 120 + "; theme=dark"), ("Connection", "keep-alive"),
    ("Upgrade-Insecure-Requests", "1"), ("Sec-Fetch-Dest", "document"), ("Sec-Fetch-Mode", "navigate"),
])
NGINX_ANSWER = [("Server", "nginx/1.22.1"), ("Date", "Mon, 07 Dec 2026 12:00:00 GMT"),
                ("Content-Type", "text/html"), ("Content-Length", "200"), ("Connection", "keep-alive"),
                ("Last-Modified", "Mon, 07 Dec 2026 08:00:00 GMT"), ("ETag", '"6763c2a0-c8"'),
                ("Accept-Ranges", "bytes")]


def taken_in() -> web.Request:
    """A request as the pipeline leaves it once intake took it in and the policy allowed it."""
    request = make_mocked_request("GET", "/docs/page?x=1", headers=BROWSER_HEADERS)
    record = RequestRecord("0123456789abcdef0123456789abcdef")
    forwarded = forwarded_for("192.0.2.10", (), ())
    record.intake = RequestContext(
        request_id=record.request_id, method="GET", client_ip=forwarded.client_ip, forwarded=forwarded,
        scheme="https", host="wiki.corp.example", host_header="wiki.corp.example",
        target=parse_target("/docs/page?x=1"), route=endpoints_route())
    record.decision = Decision(Outcome.ALLOW, ("email-domain",), rule="allow[0]")
    request[RECORD] = record
    return request


def best_ns(work: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(REPEATS):
        started = time.process_time()
        for _ in range(CALLS):
            work()
        best = min(best, time.process_time() - started)
    return best / CALLS * 1e9


async def best_ns_async(work: Callable[[], Awaitable[object]]) -> float:
    best = float("inf")
    for _ in range(REPEATS):
        started = time.process_time()
        for _ in range(CALLS):
            await work()
        best = min(best, time.process_time() - started)
    return best / CALLS * 1e9


async def measure() -> dict[str, float]:
    request = taken_in()
    response = web.Response(body=b"x" * 200)
    access_logger = AccessLogger(logging.getLogger("bench"), "")
    rules = header_rules(owned=("X-Device-Posture",), separators=DROP_PROTECTED)
    forwarded = request[RECORD].context.forwarded

    def hygiene() -> None:
        upstream_request_headers(request.headers, rules=rules, forwarded=forwarded, proto="https",
                                 host="wiki.corp.example", request_id="0123456789abcdef0123456789abcdef",
                                 upstream_host="10.0.0.5:8080")
        downstream_response_headers(NGINX_ANSWER)

    def stage(request: web.Request) -> None:
        return None

    async def handler(request: web.Request) -> web.StreamResponse:
        return response

    pipeline = build_pipeline((stage,), handler)
    bare = make_mocked_request("GET", "/", headers=BROWSER_HEADERS)
    async with LOG_SINK.batching(3600):  # as a running server: lines leave in large writes
        return {
            "access": best_ns(lambda: access_logger.log(request, response, 0.00184)),
            "hygiene": best_ns(hygiene),
            "driver": await best_ns_async(lambda: pipeline(bare)),
        }


def main() -> int:
    configure_logging("info", "json")
    stdout = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # the access lines go nowhere; the results are printed once it is back
    try:
        results = asyncio.run(measure())
    finally:
        os.dup2(stdout, 1)
        os.close(devnull)
    for name, ns in results.items():
        print(f"{name:8} {ns:8.0f} ns per request")
    print(f"{'total':8} {sum(results.values()):8.0f} ns per request")
    return 0


if __name__ == "__main__":
    sys.exit(main())

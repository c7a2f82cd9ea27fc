"""Faults of ztproxy's dependencies, on real processes: a lab, a bounded load and the report.

A scenario (``tests/support/fault_scenarios.py``, which ``bench/faults.py`` runs)
starts what it needs in a :class:`Lab` (``redis-server``/``redis-sentinel``, the demo IdP,
upstreams, ``ztproxy run`` processes; loopback only, each stopped by PID), drives a small
:class:`Load` (a few tasks, a new connection per request so every worker gets some)
while it breaks one dependency and brings it back, and sums the samples up with
:func:`summarize` into a :class:`FaultReport`:

- ``wrongly_allowed``: a 200 that must never be: an anonymous or revoked request to a
  protected route, or a signed-in one served from the local copy later than ``cache_ttl``
  after the session store went away (fail closed);
- ``fail_closed``: the refusals the fault calls for while the dependency is away (503
  ``session-store-unavailable``, the 503 sign-in page, 504, a refused connection after
  SIGTERM), and those the scenario explains by what the dependency did on its return (the
  restarted IdP refusing a session it forgot), counted apart from
- ``failed``: every other answer that is not the normal one for its kind of request;
- ``hangs``: requests slower than the bound the configuration promises;
- ``stranded``: sign-ins sent to an IdP that cannot answer later than the bound ztproxy
  states for noticing (the browser meets an error there instead of the 503 page);
- ``recovery_s``: from the dependency's return to the end of the first normal answer of
  the scenario's recovery kind started after it;
- ``checks``: what else the scenario verified, by name (exit status, a new sign-in...).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import secrets
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web
from yarl import URL

from tests.conftest import REPO, ProxyProcess, free_port, wait_ready
from tests.support.idp import DEFAULT_USERS
from tests.support.redis import RedisFactory
from tests.support.relay import ImpairedRelay, Impairments
from ztproxy.demo_idp import DemoIdp, IdpClient

CLIENT_ID = "ztproxy"
CLIENT_SECRET = "fault-lab-client-secret"
COOKIE_NAME = "ztproxy_session"
JSON = "application/json"
BROWSER = "text/html,application/xhtml+xml;q=0.9,*/*;q=0.8"

# Statuses for answers that never came (real HTTP statuses are 100-599).
REFUSED = 0  # nothing listens: the connection was refused
BROKEN = -1  # the connection was reset or closed without an answer
HUNG = -2  # no answer within the load's client deadline

_TITLE = re.compile(r"<title>(.*?)</title>", re.S)


# --- processes ------------------------------------------------------------------------------


class HungUpstream:
    """An upstream that accepts connections and never answers, until :meth:`answer`.

    Raw sockets, not aiohttp: it does not even read the request, as a wedged backend does.
    Once answering, every request on a new connection gets a 200 and ``Connection: close``.
    """

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._answering = asyncio.Event()
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    def answer(self) -> None:
        self._answering.set()

    async def close(self) -> None:
        self._answering.set()
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            await self._answering.wait()
            with contextlib.suppress(asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
                await reader.readuntil(b"\r\n\r\n")
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n"
                             b"Connection: close\r\n\r\nok\n")
                await writer.drain()
        finally:
            self._writers.discard(writer)
            writer.close()


@dataclass(frozen=True)
class Pace:
    """How long a scenario's phases last: load before the fault, the outage, load after recovery.

    The outage outlasts ``cache_ttl`` plus ``store_timeout`` (at most 2.5 s in the scenarios).
    """

    baseline: float
    outage: float
    tail: float


SMOKE = Pace(baseline=0.5, outage=3.0, tail=0.5)  # a few seconds a fault: the test suite's run
LONG = Pace(baseline=5.0, outage=20.0, tail=5.0)  # the benchmark's


class Lab:
    """Everything one scenario starts, in ``workdir``; ``async with`` stops all of it by PID.

    With ``network``, the IdP, Redis and the upstreams are reached (by ztproxy and by the
    browser alike) through an :class:`~tests.support.relay.ImpairedRelay` each; the load
    reaches ztproxy directly.
    """

    def __init__(self, workdir: Path, *, pace: Pace = SMOKE, network: Impairments | None = None) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.pace = pace
        self.network = network
        self.relays: list[ImpairedRelay] = []
        self.redis = RedisFactory(workdir / "redis")
        self._stack = AsyncExitStack()
        self._proxies: list[ProxyProcess] = []

    async def __aenter__(self) -> Lab:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        try:
            for proxy in self._proxies:
                await asyncio.to_thread(stop_process, proxy.process)
            await self._stack.aclose()
        finally:
            self.redis.stop_all()

    async def reach(self, url: str) -> str:
        """``url`` (one host on loopback), through the impaired network when the lab has one."""
        if self.network is None:
            return url
        parsed = URL(url)
        assert parsed.port is not None
        relay = await ImpairedRelay(parsed.port, self.network, seed=len(self.relays)).start()
        self.relays.append(relay)
        self._stack.push_async_callback(relay.close)
        return str(parsed.with_port(relay.port))

    def network_faults(self) -> str:
        """What the relays did, for the report ("" on a plain network)."""
        if self.network is None:
            return ""
        return (f"network: {self.network.describe()}; {sum(r.resets for r in self.relays)} resets, "
                f"{sum(r.drops for r in self.relays)} dropped connections")

    async def upstream(self, handler: Callable[[web.Request], Awaitable[web.StreamResponse]] | None = None) -> str:
        """A real HTTP server on a free port: ``handler`` for every path (default: a small 200)."""
        async def default(request: web.Request) -> web.StreamResponse:
            return web.Response(text="upstream ok\n")

        app = web.Application()
        app.router.add_route("*", "/{path:.*}", handler or default)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        self._stack.push_async_callback(runner.cleanup)
        return await self.reach(f"http://127.0.0.1:{port}")

    async def hung_upstream(self) -> HungUpstream:
        upstream = HungUpstream()
        await upstream.start()
        self._stack.push_async_callback(upstream.close)
        return upstream

    async def idp(self, proxy_url: str) -> DemoIdp:
        """The demo IdP (npm oidc-provider) with a client for the proxy at ``proxy_url``."""
        client = IdpClient(client_id=CLIENT_ID, client_secret=CLIENT_SECRET,
                           redirect_uris=(f"{proxy_url}/.ztproxy/callback",),
                           post_logout_redirect_uris=(f"{proxy_url}/.ztproxy/signed-out",))
        port = free_port()
        public_port = URL(await self.reach(f"http://127.0.0.1:{port}")).port
        idp = DemoIdp(workdir=self.workdir / f"idp-{port}", port=port, clients=[client], users=DEFAULT_USERS,
                      public_port=public_port)
        await self._stack.enter_async_context(idp)
        return idp

    async def proxy(self, config_yaml: str, *, port: int, admin_port: int, workers: int = 1) -> ProxyProcess:
        """``ztproxy run`` on ``port``, returned once its admin listener says it is ready."""
        index = len(self._proxies)
        config_path = self.workdir / f"ztproxy-{index}.yaml"
        config_path.write_text(config_yaml, encoding="utf-8")
        log_path = self.workdir / f"ztproxy-{index}.log"
        with open(log_path, "wb") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-m", "ztproxy", "run", "-c", str(config_path), "--workers", str(workers)],
                stdout=log_file, stderr=subprocess.STDOUT, cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        proxy = ProxyProcess(process=process, url=f"http://127.0.0.1:{port}",
                             admin_url=f"http://127.0.0.1:{admin_port}", log_path=log_path)
        self._proxies.append(proxy)
        try:
            await asyncio.to_thread(wait_ready, proxy.admin_url, process)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}; its log:\n" + "\n".join(proxy.log_lines()[-30:])) from None
        return proxy


def stop_process(process: subprocess.Popen[bytes], timeout: float = 15.0) -> int:
    """SIGTERM by PID, SIGKILL after ``timeout``; the exit status."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait()


def proxy_config(*, port: int, admin_port: int, routes: str, idp: DemoIdp | None = None, sessions: str = "",
                 idp_options: str = "") -> str:
    """A config with ``routes`` (YAML list items) and, with ``idp``, sign-in at it (``idp_options``:
    more of its settings, in flow style: ``http_timeout: 2s``)."""
    more = f", {idp_options}" if idp_options else ""
    sign_in = "" if idp is None else f"""
identity_providers:
  - {{name: demo, issuer: '{idp.issuer}', client_id: {CLIENT_ID}, client_secret: {CLIENT_SECRET}{more}}}
sessions:
  cookie_secrets: [{secrets.token_hex(32)}]
{sessions}
risk:  # the load starts sign-ins by the hundred from 127.0.0.1: never a burst here
  sign_ins: {{count: 1000000, window: 60s, lock: 1s}}"""
    return f"""
server:
  listen: 127.0.0.1:{port}
  admin_listen: 127.0.0.1:{admin_port}
  shutdown_grace: 10s
{sign_in}
routes:
{routes}
"""


# --- load -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    """One kind of request the load sends: who asks (``kind``), for what, as what client."""

    kind: str
    path: str
    cookie: str | None = None
    browser: bool = False  # a page load (Accept: text/html), else an API call (JSON errors)


@dataclass(frozen=True)
class Sample:
    kind: str
    started: float  # time.monotonic() when the request was sent
    elapsed: float
    status: int  # the HTTP status, or REFUSED, BROKEN, HUNG
    detail: str = ""  # the JSON error code, the HTML page's title, the redirect target or the error

    @property
    def ended(self) -> float:
        return self.started + self.elapsed


class Load:
    """``tasks`` tasks send the probes round robin from ``start()`` until ``finish()``.

    Every request goes on a new connection (so the workers sharing the port all get some)
    and waits at most ``client_timeout`` (then it is a HUNG sample). The pause between a
    task's requests keeps the load small (the machine is shared), and ``max_seconds``
    bounds it whatever the scenario does. ``samples`` fills as answers come.
    """

    def __init__(self, base_url: str, probes: list[Probe], *, tasks: int = 4, pause: float = 0.02,
                 client_timeout: float = 5.0, max_seconds: float = 30.0) -> None:
        self.base_url = base_url
        self.probes = probes
        self.samples: list[Sample] = []
        self._tasks = tasks
        self._pause = pause
        self._client_timeout = client_timeout
        self._max_seconds = max_seconds
        self._stop = asyncio.Event()
        self._running: asyncio.Task[None] | None = None

    def start(self) -> Load:
        self._running = asyncio.create_task(self._run())
        return self

    async def finish(self) -> list[Sample]:
        self._stop.set()
        if self._running is not None:
            await self._running
        return self.samples

    async def first(self, kind: str, status: int, *, since: float, within: float) -> Sample | None:
        """The first answer ``status`` to a ``kind`` request sent after ``since``; None after ``within`` s."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            found = [s for s in self.samples if s.kind == kind and s.status == status and s.started >= since]
            if found:
                return min(found, key=lambda s: s.ended)
            await asyncio.sleep(0.05)
        return None

    async def _run(self) -> None:
        give_up = time.monotonic() + self._max_seconds
        connector = aiohttp.TCPConnector(force_close=True, limit=0)
        async with aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar(),
                                         timeout=aiohttp.ClientTimeout(total=self._client_timeout)) as client:
            async def worker(offset: int) -> None:
                turn = offset
                while not self._stop.is_set() and time.monotonic() < give_up:
                    probe = self.probes[turn % len(self.probes)]
                    self.samples.append(await _send(client, self.base_url, probe))
                    turn += 1
                    # Jittered, so tasks held up together by a fault do not march in step after.
                    await asyncio.sleep(self._pause * random.uniform(0.5, 1.5))

            await asyncio.gather(*(worker(i) for i in range(self._tasks)))


async def _send(client: aiohttp.ClientSession, base_url: str, probe: Probe) -> Sample:
    headers = {"Accept": BROWSER if probe.browser else JSON}
    if probe.cookie is not None:
        headers["Cookie"] = f"{COOKIE_NAME}={probe.cookie}"
    started = time.monotonic()
    try:
        async with client.get(base_url + probe.path, headers=headers, allow_redirects=False) as response:
            body = await response.text(errors="replace")
            status, detail = response.status, _detail(response, body)
    except aiohttp.ClientConnectorError as exc:
        refused = isinstance(exc.os_error, ConnectionRefusedError)
        status, detail = (REFUSED if refused else BROKEN), type(exc).__name__
    except TimeoutError:
        status, detail = HUNG, "no answer"
    except (aiohttp.ClientError, OSError) as exc:
        status, detail = BROKEN, type(exc).__name__
    return Sample(probe.kind, started, time.monotonic() - started, status, detail)


def _detail(response: aiohttp.ClientResponse, body: str) -> str:
    if response.status in (301, 302, 303, 307, 308):
        return str(URL(response.headers.get("Location", "")).with_query(None))  # not the per-login state
    if response.status < 400:
        return ""
    if response.content_type == JSON:
        with contextlib.suppress(ValueError):
            return str(json.loads(body).get("error", ""))
    title = _TITLE.search(body)
    return title.group(1).strip() if title else body[:60]


# --- report ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class FaultReport:
    fault: str
    requests: int
    wrongly_allowed: int
    fail_closed: int
    failed: int
    hangs: int
    stranded: int
    recovery_s: float | None  # None: no recovery in this scenario, or none seen
    slowest_s: float
    checks: dict[str, bool] = field(default_factory=dict)
    notes: str = ""  # a measurement of this fault's own, in words ("drained in 0.61s")
    breakdown: str = ""  # answers by kind, status and detail, then when each failed one came: for a failed check

    @property
    def problems(self) -> list[str]:
        """What is wrong by this report's own bounds (empty: the fault was weathered)."""
        found = [f"{name}: no" for name, ok in self.checks.items() if not ok]
        if self.wrongly_allowed:
            found.append(f"{self.wrongly_allowed} wrongly allowed")
        if self.failed:
            found.append(f"{self.failed} failed")
        if self.hangs:
            found.append(f"{self.hangs} hung")
        if self.stranded:
            found.append(f"{self.stranded} stranded")
        return found

    def line(self) -> str:
        recovery = "-" if self.recovery_s is None else f"{self.recovery_s:.2f}s"
        failing = [name for name, ok in self.checks.items() if not ok]
        return (f"{self.fault:<22} requests={self.requests:<4} wrongly_allowed={self.wrongly_allowed} "
                f"fail_closed={self.fail_closed:<3} failed={self.failed:<3} hangs={self.hangs} "
                f"stranded={self.stranded} "
                f"recovery={recovery:<6} slowest={self.slowest_s:.2f}s "
                f"checks={'ok' if not failing else 'FAILED: ' + ', '.join(failing)}"
                + (f" ({self.notes})" if self.notes else ""))


def _when(sample: Sample, fault_at: float, returned_at: float | None) -> str:
    since_return = "" if returned_at is None else f" and {sample.started - returned_at:+.3f}s from its return"
    return (f"{sample.kind} {sample.status} {sample.detail}".rstrip()
            + f" sent {sample.started - fault_at:+.3f}s from the fault{since_return}"
            + f", answered in {sample.elapsed:.3f}s")


ODD_SHOWN = 10  # wrongly allowed or failed requests the breakdown times, at most


def summarize(fault: str, samples: list[Sample], *, normal: dict[str, int], protected: Iterable[str],
              fault_at: float, returned_at: float | None, refusal: Callable[[Sample], bool], hang_bound: float,
              recovery_kind: str | None, recovery_bound: float, stale: tuple[float, float] | None = None,
              stranded: int = 0, resume_bound: float = 0.0, checks: dict[str, bool] | None = None,
              notes: str = "", network_refusal: Callable[[Sample], bool] | None = None,
              network: str = "", fault_met: bool | None = None,
              explained: Callable[[Sample], bool] | None = None) -> FaultReport:
    """Sort the samples into the report's counts (see the module docstring).

    ``normal`` is each kind's answer when nothing is wrong; ``refusal`` says whether a
    sample is the expected refusal, counted when the request overlapped the outage
    [``fault_at``, ``returned_at`` + ``resume_bound``] (``resume_bound``: the time the proxy
    states it may take to notice the return, when it does not wait for it). ``stale``: a
    signed-in 200 sent in that interval came from a local copy older than ``cache_ttl`` (it
    starts ``cache_ttl`` after the store went away and ends ``store_timeout`` before it was
    back: a read sent later may wait for it).
    ``network_refusal``: on an impaired network, the refusals it may cause at any time,
    counted as fail-closed too (``network`` says what the network did, for the notes).
    ``fault_met``: whether requests met the fault, when the scenario tells (else: some
    were refused while it lasted). ``explained``: refusals the scenario accounts for by what
    the dependency did on its return (the restarted IdP refusing a session it forgot),
    counted as fail-closed, not as the fault's (they do not show the fault was met).
    The report's checks say, besides the scenario's own, that no request got a 500, that
    the fault's refusals were seen (else the fault was never met) and that the recovery
    came within ``recovery_bound`` seconds.
    """
    protected = frozenset(protected)
    back = returned_at + resume_bound if returned_at is not None else float("inf")
    stale_from, stale_until = stale if stale is not None else (0.0, 0.0)
    wrongly_allowed = fail_closed = failed = met = 0
    odd: list[Sample] = []  # wrongly allowed or failed: when each came says most about why
    also_refused = [judge for judge in (explained, network_refusal) if judge is not None]
    for sample in samples:
        during = sample.ended >= fault_at and sample.started <= back
        if sample.status == 200 and (sample.kind in protected or (
                sample.kind == "signed-in" and stale_from <= sample.started < stale_until)):
            wrongly_allowed += 1
            odd.append(sample)
        elif during and refusal(sample):
            fail_closed += 1
            met += 1
        elif sample.status != normal[sample.kind] and any(judge(sample) for judge in also_refused):
            fail_closed += 1
        elif sample.status != normal[sample.kind]:
            failed += 1
            odd.append(sample)
    verified = {"no internal error": all(s.status != 500 for s in samples)}
    if fault_met is None:
        verified["refused while down"] = met > 0
    else:  # the scenario knows better how a request met the fault (it may wait instead of a refusal)
        verified["fault met (refused or waited)"] = fault_met
    if stale is not None:
        # Else the stale count proves nothing: no signed-in request came when the copy was too old.
        verified["signed-in probed past cache_ttl"] = any(
            s.kind == "signed-in" and stale_from <= s.started < stale_until for s in samples)
    recovery_s = None
    if recovery_kind is not None and returned_at is not None:
        recovered = [s.ended for s in samples if s.kind == recovery_kind and s.started >= returned_at
                     and s.status == normal[recovery_kind]]
        recovery_s = min(recovered) - returned_at if recovered else None
        verified[f"recovered within {recovery_bound:g}s"] = recovery_s is not None and recovery_s < recovery_bound
    tally = Counter((s.kind, s.status, s.detail) for s in samples)
    timed = [_when(s, fault_at, returned_at) for s in odd[:ODD_SHOWN]]
    return FaultReport(
        fault=fault, requests=len(samples), wrongly_allowed=wrongly_allowed, fail_closed=fail_closed,
        failed=failed, hangs=sum(1 for s in samples if s.status == HUNG or s.elapsed > hang_bound), stranded=stranded,
        recovery_s=recovery_s, slowest_s=max((s.elapsed for s in samples), default=0.0),
        checks={**verified, **(checks or {})}, notes="; ".join(part for part in (notes, network) if part),
        breakdown=", ".join(f"{kind} {status} {detail}".rstrip() + f": {count}"
                            for (kind, status, detail), count in sorted(tally.items()))
        + "".join(f"\n    {line}" for line in timed))

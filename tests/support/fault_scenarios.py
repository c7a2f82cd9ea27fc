"""The fault scenarios: ztproxy keeps serving safely through the faults of its dependencies.

Each scenario runs on real processes (``ztproxy run --workers 2``, ``redis-server``,
Sentinel, the demo IdP, real upstreams): a small load runs while one dependency breaks and
comes back, and a :class:`~tests.support.faults.FaultReport` says how it went: nothing
wrongly allowed, nothing failed, nothing hung beyond the configured bound plus a generous
margin, no sign-in stranded at a stopped IdP, recovery within RECOVERY_BOUND, and the
scenario's own checks. ``bench/faults.py`` runs them (``--smoke``: a few seconds a fault, as
``tests/integration/test_faults.py`` does; else the longer benchmark) and prints a verdict
line per fault and the table.

The IdP down, Redis killed and Redis frozen run in that order on one shared world:
starting two-worker ztproxy, the IdP and signing in is most of a scenario's time, and
each scenario leaves the world healthy or fails. The loads are small (4 tasks): the
machine is shared.

On an impaired network (the lab's ``network``: IdP, Redis and upstreams behind relays
that add latency, split writes and reset or drop connections), the refusals such a
network causes at any time (``NETWORK_REFUSALS``) count as fail-closed, and every hang
bound grows by the timeouts a request may spend on it (``NETWORK_SLACK``). Sentinel hands
out the data nodes' own addresses, so in that scenario only the IdP and upstream are
behind relays.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from tests.conftest import ProxyProcess, free_port
from tests.support.faults import (
    BROKEN,
    COOKIE_NAME,
    REFUSED,
    SMOKE,
    FaultReport,
    Lab,
    Load,
    Pace,
    Probe,
    Sample,
    proxy_config,
    stop_process,
    summarize,
)
from tests.support.idp import ALICE_PASSWORD
from tests.support.redis import RedisServer, wait_until
from tests.support.relay import Impairments
from tests.support.user_agent import UserAgent
from ztproxy.demo_idp import DemoIdp
from ztproxy.oidc.reachability import CURRENT_FOR

RECOVERY_BOUND = 5.0  # generous: "recovers by itself", not a performance figure
HANG_MARGIN = 1.5  # over a configured timeout before a request counts as hung (a busy machine)
CACHE_TTL = 1.0
STALE_MARGIN = 0.1  # the proxy times its cache by the wall clock, the load by the monotonic one
STORE_TIMEOUT = 0.5
READ_TIMEOUT = 1.0
SLOW_UPSTREAM = 2.0  # the upstream of the SIGTERM scenario: requests are in flight when it comes
REFUSE_BOUND = 1.0  # a refused connection fails in milliseconds: this is "at once", generously
STORE_UNAVAILABLE = "session-store-unavailable"
CLIENT_TIMEOUT = 5.0  # the load's, per request: past every bound of a plain network
# On an impaired network: the IdP's and the upstreams' timeouts, and how much longer a request
# may then take (a refresh at the IdP, an upstream answer and a few store operations).
NETWORK_HTTP_TIMEOUT = 2.0
NETWORK_READ_TIMEOUT = 3.0
NETWORK_STORE_TIMEOUT = 1.5  # a round trip alone may take 0.6 s there
NETWORK_SLACK = NETWORK_HTTP_TIMEOUT + NETWORK_READ_TIMEOUT + 2 * NETWORK_STORE_TIMEOUT
NETWORK_CLIENT_TIMEOUT = 20.0
# What an impaired network may cause at any time, fail-closed: (status, JSON code or page title).
NETWORK_REFUSALS = frozenset({(503, STORE_UNAVAILABLE), (503, "503 Sign-in service unavailable"),
                              (503, "idp-unavailable"), (503, "503 Sign-in unavailable"),
                              (502, "upstream-unavailable"), (504, "upstream-timeout")})
NETWORK_TASKS = 8  # the load's: each request takes longer there
STALE_PROBING = 1.5  # seconds of outage past cache_ttl + store_timeout: signed-in requests meet a stale copy

ROUTES = """\
  - {{name: app, path: /app, upstream: '{upstream}', read_timeout: {read_timeout}s,
      allow: [{{email_domains: [corp.example]}}]}}
  - {{name: public, path: /public, upstream: '{upstream}', read_timeout: {read_timeout}s, allow: [{{public: true}}]}}
"""
PLAIN_READ_TIMEOUT = 60.0  # ztproxy's default


def network_refusal(sample: Sample) -> bool:
    return (sample.status, sample.detail) in NETWORK_REFUSALS


def impaired(lab: Lab) -> dict[str, Any]:
    """summarize()'s arguments for the lab's network: its refusals and what the relays did."""
    if lab.network is None:
        return {}
    return {"network_refusal": network_refusal, "network": lab.network_faults()}


def read_timeout(lab: Lab) -> float:
    return PLAIN_READ_TIMEOUT if lab.network is None else NETWORK_READ_TIMEOUT


def store_timeout(lab: Lab) -> float:
    return STORE_TIMEOUT if lab.network is None else NETWORK_STORE_TIMEOUT


def bound(lab: Lab, plain: float) -> float:
    """A hang bound on the lab's network: ``plain`` on loopback, plus NETWORK_SLACK when impaired."""
    return plain if lab.network is None else plain + NETWORK_SLACK


def load(lab: Lab, url: str, probes: list[Probe], **options: Any) -> Load:
    options.setdefault("client_timeout", CLIENT_TIMEOUT if lab.network is None else NETWORK_CLIENT_TIMEOUT)
    if lab.network is not None:
        options.setdefault("tasks", NETWORK_TASKS)
    return Load(url, probes, **options)


@dataclass
class SignedInWorld:
    """ztproxy (two workers) in front of an upstream, with sign-in at the demo IdP."""

    lab: Lab
    proxy: ProxyProcess
    idp: DemoIdp
    redis: RedisServer | None  # the session store, when it is one standalone server
    cookie: str  # alice's live session
    revoked: str  # a session of alice's that was signed out before the fault

    def probes(self, *, anonymous_browser: bool = False) -> list[Probe]:
        return [Probe("signed-in", "/app/", self.cookie),
                Probe("anonymous", "/app/", browser=anonymous_browser),
                Probe("signed-in", "/app/", self.cookie),
                Probe("revoked", "/app/", self.revoked),
                Probe("public", "/public/")]


async def sign_in(url: str, *, sign_out: bool = False, attempts: int = 1) -> str:
    """Alice's session cookie, from a real sign-in at ``url``; ``sign_out`` ends it first.

    A cookie whose session was ended is what a revoked session looks like to the proxy.
    ``attempts``: on an impaired network a reset can cut any sign-in short; try again.
    """
    for attempt in range(1, attempts + 1):
        try:
            return await _sign_in_once(url, sign_out=sign_out)
        except (RuntimeError, aiohttp.ClientError, TimeoutError) as exc:
            if attempt == attempts:
                raise RuntimeError(f"sign-in at {url}: {exc}") from exc
    raise AssertionError("unreachable")


def sign_in_attempts(lab: Lab) -> int:
    return 1 if lab.network is None else 5


async def _sign_in_once(url: str, *, sign_out: bool) -> str:
    async with UserAgent() as agent:
        final = await agent.login(url + "/app/", "alice", ALICE_PASSWORD)
        if final.status != 200:
            raise RuntimeError(f"sign-in at {url} ended with {final.status}: {final.text[:300]}")
        cookie = next(c.value for c in agent.cookie_jar if c.key == COOKIE_NAME)
        if sign_out:
            page = await agent.get(url + "/.ztproxy/logout")
            form = page.form("csrf")
            if form is None:
                raise RuntimeError(f"no sign-out form: {page.status} {page.text[:300]}")
            out = await agent.request("POST", form.action, data=form.fields)
            if out.status != 303:
                raise RuntimeError(f"sign-out answered {out.status}: {out.text[:300]}")
    return cookie


async def sign_in_problem(url: str, attempts: int = 1) -> str | None:
    """None when a new sign-in works, else what went wrong (for the report)."""
    try:
        await sign_in(url, attempts=attempts)
    except RuntimeError as exc:
        return str(exc)[:200]
    return None


def kept_running(proxy: ProxyProcess) -> bool:
    """Still serving, and no worker died on the way (the supervisor would have restarted it)."""
    return proxy.process.poll() is None and not any('"worker_exited"' in line for line in proxy.log_lines())


async def signed_in_world(lab: Lab, store: str | RedisServer, sessions: str = "") -> SignedInWorld:
    port, admin_port = free_port(), free_port()
    url = f"http://127.0.0.1:{port}"
    upstream = await lab.upstream()
    idp = await lab.idp(url)
    store_url = store if isinstance(store, str) else await lab.reach(store.url)
    config = proxy_config(port=port, admin_port=admin_port, idp=idp,
                          routes=ROUTES.format(upstream=upstream, read_timeout=read_timeout(lab)),
                          idp_options="" if lab.network is None else f"http_timeout: {NETWORK_HTTP_TIMEOUT}s",
                          sessions=f"  store: '{store_url}'\n  cache_ttl: {CACHE_TTL}s\n"
                                   f"  store_timeout: {store_timeout(lab)}s\n{sessions}")
    proxy = await lab.proxy(config, port=port, admin_port=admin_port, workers=2)
    attempts = sign_in_attempts(lab)
    cookie, revoked = await asyncio.gather(sign_in(url, attempts=attempts),
                                           sign_in(url, sign_out=True, attempts=attempts))
    # A worker that saw the revoked session may trust its copy for cache_ttl: let that pass,
    # so a 200 for it can only mean the revocation was lost.
    await asyncio.sleep(CACHE_TTL)
    return SignedInWorld(lab=lab, proxy=proxy, idp=idp, redis=None if isinstance(store, str) else store, cookie=cookie,
                         revoked=revoked)


async def standalone_world(lab: Lab) -> SignedInWorld:
    """The world the Redis and IdP faults share, one after the other (each leaves it healthy).

    Redis persists with AOF synced at every write: what a kill interrupts is on disk, as
    with any persistent Redis. Sessions are re-verified at the IdP every second, so an IdP
    outage is met by refreshes that fail, not just by sign-ins.
    """
    redis = lab.redis.start("appendonly yes", "appendfsync always")
    return await signed_in_world(lab, redis, "  refresh_interval: 1s\n")


def store_refusal(sample: Sample) -> bool:
    return sample.status == 503 and sample.detail == STORE_UNAVAILABLE


SIGNED_IN_NORMAL = {"signed-in": 200, "anonymous": 401, "revoked": 401, "public": 200}
PROTECTED = ("anonymous", "revoked")


async def recovered(lab: Lab, running: Load, kind: str, status: int, since: float) -> None:
    """Let the load run until the first normal answer after ``since`` (bounded), then the tail."""
    await running.first(kind, status, since=since, within=RECOVERY_BOUND)
    await asyncio.sleep(lab.pace.tail)


# --- the scenarios (bench/faults.py runs them too) ---------------------------------------------------


async def redis_killed(world: SignedInWorld) -> FaultReport:
    """SIGKILL Redis under load, restart it: fail closed meanwhile, sessions back after."""
    redis = world.redis
    assert redis is not None
    return await store_outage(world, "redis killed", lambda: redis.stop(kill=True), redis.start)


async def redis_frozen(world: SignedInWorld) -> FaultReport:
    """SIGSTOP Redis (it accepts, never answers): 503 after store_timeout, never a hang."""
    redis = world.redis
    assert redis is not None
    return await store_outage(world, "redis frozen", redis.freeze, redis.thaw)


async def store_outage(world: SignedInWorld, fault: str, break_store: Callable[[], None],
                       restore_store: Callable[[], None]) -> FaultReport:
    lab = world.lab
    running = load(lab, world.proxy.url, world.probes()).start()
    try:
        await asyncio.sleep(lab.pace.baseline)
        # Stamped before: the load's tasks share this loop and may record answers to requests
        # the kill met before this coroutine runs again (on a busy machine, well before).
        breaking_at = time.monotonic()
        await asyncio.to_thread(break_store)
        fault_at = time.monotonic()  # broken for sure: a local copy may be trusted cache_ttl from here
        await asyncio.sleep(max(lab.pace.outage, CACHE_TTL + store_timeout(lab) + STALE_PROBING))
    finally:
        restoring_at = time.monotonic()
        await asyncio.to_thread(restore_store)
    returned_at = time.monotonic()
    await recovered(lab, running, "signed-in", 200, returned_at)
    samples = await running.finish()
    refused = [s.elapsed for s in samples if store_refusal(s)]
    return summarize(fault, samples, normal=SIGNED_IN_NORMAL, protected=PROTECTED, fault_at=breaking_at,
                     returned_at=returned_at, refusal=store_refusal,
                     hang_bound=bound(lab, store_timeout(lab) + HANG_MARGIN), recovery_kind="signed-in",
                     recovery_bound=RECOVERY_BOUND, **impaired(lab),
                     stale=(fault_at + CACHE_TTL + STALE_MARGIN, restoring_at - store_timeout(lab)),
                     checks={"proxy and workers kept running": kept_running(world.proxy)},
                     notes=f"slowest 503 {max(refused, default=0):.2f}s with store_timeout {store_timeout(lab)}s")


async def sentinel_failover(lab: Lab) -> FaultReport:
    """Sentinel promotes a replica twice under load: once on request, once after the master died.

    Sessions keep working through the first (at most a short blip); through the second
    the proxy fails closed until the promotion, then follows the new master by itself.
    """
    setup = await asyncio.to_thread(lab.redis.sentinel)
    first, second = setup.data_nodes
    world = await signed_in_world(lab, setup.url)
    # What a failover keeps is what was replicated: let the sessions reach the replica.
    await asyncio.to_thread(first.command, "WAIT", 1, 2000)
    running = load(lab, world.proxy.url, world.probes()).start()
    await asyncio.sleep(lab.pace.baseline)
    fault_at = time.monotonic()
    await asyncio.to_thread(setup.failover)  # second is master, first its replica
    planned = time.monotonic() - fault_at
    await asyncio.to_thread(wait_until, first.synced, "the old master to sync from the new one")
    await asyncio.to_thread(second.command, "WAIT", 1, 2000)
    await asyncio.sleep(lab.pace.baseline)
    await asyncio.to_thread(second.stop, kill=True)
    crashed_at = time.monotonic()
    await asyncio.sleep(CACHE_TTL)  # as long as sentinels take to agree a master is down
    promoting_at = time.monotonic()
    await asyncio.to_thread(setup.failover)  # first is master again
    returned_at = time.monotonic()
    await recovered(lab, running, "signed-in", 200, returned_at)
    # A new session: written to the new master.
    sign_in_after = await sign_in_problem(world.proxy.url, sign_in_attempts(lab))
    samples = await running.finish()
    blip = sum(1 for s in samples if store_refusal(s) and s.started < crashed_at)
    # Sent with the master dead, past any local copy and before the promotion was done, then
    # answered: it waited for the new master.
    waited = [s for s in samples if s.kind == "signed-in" and s.status == 200
              and crashed_at + CACHE_TTL + STALE_MARGIN < s.started < returned_at]
    return summarize("sentinel failover", samples, normal=SIGNED_IN_NORMAL, protected=PROTECTED,
                     fault_at=fault_at, returned_at=returned_at, refusal=store_refusal,
                     hang_bound=bound(lab, store_timeout(lab) + HANG_MARGIN), recovery_kind="signed-in",
                     recovery_bound=RECOVERY_BOUND, **impaired(lab),
                     fault_met=any(store_refusal(s) for s in samples) or bool(waited),
                     checks={"sign-in after the failovers": sign_in_after is None,
                             "proxy and workers kept running": kept_running(world.proxy)},
                     notes=f"planned failover {planned:.2f}s with {blip} 503s; after the master died, "
                           f"promotion took {returned_at - promoting_at:.2f}s, {len(waited)} requests waited for it"
                           + (f"; the sign-in after: {sign_in_after}" if sign_in_after else ""))


async def idp_down(world: SignedInWorld) -> FaultReport:
    """Stop the IdP: sessions keep working (refresh deferred), new sign-ins get the 503 page.

    Signs in again once the IdP is back, and leaves that session in ``world.cookie``.
    """
    lab = world.lab
    running = load(lab, world.proxy.url, world.probes(anonymous_browser=True)).start()
    try:
        await asyncio.sleep(lab.pace.baseline)
        stopping_at = time.monotonic()  # answers the stop met may be recorded before the next line
        await world.idp.stop()
        fault_at = time.monotonic()
        await asyncio.sleep(lab.pace.outage)
    finally:
        restarting_at = time.monotonic()  # it may answer before start() returns
        await world.idp.start()  # same port, same keys; its sessions and grants are gone
    returned_at = time.monotonic()
    await recovered(lab, running, "anonymous", 302, returned_at)
    samples = await running.finish()
    try:
        # The restarted IdP forgot the grant of the old session: its next refresh would end it.
        world.cookie = await sign_in(world.proxy.url, attempts=sign_in_attempts(lab))
        signed_in_after = True
    except RuntimeError:
        signed_in_after = False
    # The restarted IdP forgot the old session's grant too: a worker that refreshes it at the
    # IdP once it is back (each defers its retry after a failure, so one that never met the
    # outage may) is told invalid_grant and rightly ends the session. Its 401s from then on
    # are the IdP's word, not the outage's.
    forgotten = sum(1 for event in world.proxy.events("session_ended") if event.get("reason") == "refresh-rejected")

    def ended_by_the_restarted_idp(sample: Sample) -> bool:
        return (forgotten > 0 and sample.kind == "signed-in" and sample.ended >= restarting_at
                and (sample.status, sample.detail) == (401, "authentication-required"))

    signed_in = [s for s in samples if s.kind == "signed-in" and not ended_by_the_restarted_idp(s)]
    kept_working = all(s.status == 200 or (lab.network is not None and network_refusal(s)) for s in signed_in)
    refused_after = sum(1 for s in samples if ended_by_the_restarted_idp(s))
    # A worker sends sign-ins to the IdP only while its last word, at most CURRENT_FOR old,
    # was an answer: a redirect to the stopped IdP later than that strands a browser.
    stranded = [s for s in samples if s.kind == "anonymous" and s.status == 302 and fault_at <= s.started
                and s.ended <= restarting_at]
    beyond = [s for s in stranded if s.started > fault_at + CURRENT_FOR + HANG_MARGIN]
    return summarize("idp down", samples, normal={**SIGNED_IN_NORMAL, "anonymous": 302}, protected=PROTECTED,
                     fault_at=stopping_at, returned_at=returned_at,
                     refusal=lambda s: s.status == 503 and s.detail.endswith("Sign-in unavailable"),
                     hang_bound=bound(lab, HANG_MARGIN), recovery_kind="anonymous", recovery_bound=RECOVERY_BOUND,
                     **impaired(lab),
                     checks={"existing sessions kept working": kept_working,
                             "sign-in after the IdP returned": signed_in_after,
                             "proxy and workers kept running": kept_running(world.proxy)},
                     stranded=len(beyond), resume_bound=CURRENT_FOR, explained=ended_by_the_restarted_idp,
                     notes=f"{len(stranded)} sign-ins sent to the stopped IdP, the last "
                           f"{max((s.started - fault_at for s in stranded), default=0):.2f}s after it stopped "
                           f"(bound {CURRENT_FOR:g}s)"
                           + (f"; the restarted IdP refused the old session's refresh, {refused_after} 401s after"
                              if refused_after else ""))


async def upstream_hung(lab: Lab) -> FaultReport:
    """An upstream that accepts and never answers: 504 within read_timeout, other routes unaffected."""
    hung = await lab.hung_upstream()
    healthy = await lab.upstream()
    port, admin_port = free_port(), free_port()
    others = read_timeout(lab)  # a dead connection on the impaired network waits this long
    routes = f"""\
  - {{name: hung, path: /hung, upstream: '{await lab.reach(hung.url)}', read_timeout: {READ_TIMEOUT}s,
      allow: [{{public: true}}]}}
  - {{name: public, path: /public, upstream: '{healthy}', read_timeout: {others}s, allow: [{{public: true}}]}}
  - {{name: closed, path: /closed, upstream: '{healthy}', read_timeout: {others}s, allow: []}}
"""
    proxy = await lab.proxy(proxy_config(port=port, admin_port=admin_port, routes=routes), port=port,
                            admin_port=admin_port)
    running = load(lab, proxy.url, [Probe("hung", "/hung/"), Probe("public", "/public/"), Probe("closed", "/closed/")])
    fault_at = time.monotonic()
    running.start()
    await asyncio.sleep(lab.pace.outage + READ_TIMEOUT)
    hung.answer()
    returned_at = time.monotonic()
    await recovered(lab, running, "hung", 200, returned_at)
    samples = await running.finish()
    public = [s for s in samples if s.kind == "public"]
    # Never held up by the hung route: answered within the latency the network adds (or refused by it).
    unaffected = all((s.status == 200 and s.elapsed < bound(lab, READ_TIMEOUT))
                     or (lab.network is not None and network_refusal(s)) for s in public)
    return summarize("upstream hung", samples, normal={"hung": 200, "public": 200, "closed": 403},
                     protected=("closed",), fault_at=fault_at, returned_at=returned_at,
                     refusal=lambda s: s.status == 504 and s.detail == "upstream-timeout",
                     hang_bound=bound(lab, READ_TIMEOUT + HANG_MARGIN), recovery_kind="hung",
                     recovery_bound=RECOVERY_BOUND, **impaired(lab),
                     checks={"other routes unaffected": unaffected, "proxy kept running": kept_running(proxy)})


async def sigterm_under_load(lab: Lab) -> FaultReport:
    """SIGTERM with requests in flight: they complete, new connections are refused at once, exit 0."""
    async def slow(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(SLOW_UPSTREAM)
        return web.Response(text="finished\n")

    upstream = await lab.upstream(slow)
    port, admin_port = free_port(), free_port()
    slowest = SLOW_UPSTREAM + read_timeout(lab) if lab.network is not None else PLAIN_READ_TIMEOUT
    routes = f"""\
  - {{name: slow, path: /, upstream: '{upstream}', read_timeout: {slowest}s, allow: [{{public: true}}]}}
  - {{name: closed, path: /closed, upstream: '{upstream}', allow: []}}
"""
    proxy = await lab.proxy(proxy_config(port=port, admin_port=admin_port, routes=routes), port=port,
                            admin_port=admin_port, workers=2)
    normal = {"slow": 200, "closed": 403, "newcomer": 403}
    client_timeout = bound(lab, 8.0)
    running = load(lab, proxy.url, [Probe("slow", "/slow"), Probe("closed", "/closed/")],
                   client_timeout=client_timeout).start()
    # Free while the load's tasks wait on their slow requests: new connections during the drain.
    newcomers = load(lab, proxy.url, [Probe("newcomer", "/closed/")], tasks=1, pause=0.1,
                     client_timeout=client_timeout)
    await asyncio.sleep(SLOW_UPSTREAM / 4)  # every task has a slow request in flight, most of it to go
    proxy.process.send_signal(signal.SIGTERM)
    fault_at = time.monotonic()
    newcomers.start()
    exit_status = await asyncio.to_thread(stop_process, proxy.process, 15.0)
    exited_at = time.monotonic()
    await asyncio.sleep(lab.pace.tail)
    samples = await running.finish() + await newcomers.finish()
    before = [s for s in samples if s.started < fault_at]
    in_flight = [s for s in before if s.kind == "slow" and s.ended > fault_at]
    # Sent after SIGTERM and not served: turned away in milliseconds, never kept for the drain.
    # Refused, or reset at once: a connection the kernel queued just before the listener closed
    # is reset when it closes (TCP), which turns the client away as fast as a refusal. One the
    # worker accepted as it closed is closed at once (tests/integration/test_drain.py).
    turned_away = [s for s in samples if s.started >= fault_at and s.status != normal[s.kind]]
    refused_at_once = bool(turned_away) and all(s.status in (REFUSED, BROKEN) and s.elapsed < REFUSE_BOUND
                                                for s in turned_away)
    return summarize("sigterm under load", samples, normal=normal, protected=("closed", "newcomer"),
                     fault_at=fault_at, returned_at=None,
                     refusal=lambda s: s.started >= fault_at and (
                         s.status == REFUSED or (s.status == BROKEN and s.elapsed < REFUSE_BOUND)),
                     hang_bound=bound(lab, SLOW_UPSTREAM + HANG_MARGIN), recovery_kind=None,
                     recovery_bound=RECOVERY_BOUND, **impaired(lab),
                     checks={"exit status 0": exit_status == 0,
                             "requests in flight at SIGTERM": bool(in_flight),
                             "in-flight requests completed": all(
                                 s.status == normal[s.kind] or (lab.network is not None and network_refusal(s))
                                 for s in before),
                             "new connections refused at once": refused_at_once},
                     notes=f"{len(in_flight)} in flight at SIGTERM; exited {exited_at - fault_at:.2f}s after it; "
                           f"slowest refusal {max((s.elapsed for s in turned_away), default=0):.2f}s")


# In this order on one standalone_world, each leaving it healthy for the next.
SHARED_WORLD_SCENARIOS: dict[str, Callable[[SignedInWorld], Awaitable[FaultReport]]] = {
    "idp-down": idp_down,
    "redis-killed": redis_killed,
    "redis-frozen": redis_frozen,
}
# Each in a Lab of its own.
OWN_LAB_SCENARIOS: dict[str, Callable[[Lab], Awaitable[FaultReport]]] = {
    "sentinel-failover": sentinel_failover,
    "upstream-hung": upstream_hung,
    "sigterm": sigterm_under_load,
}


async def run_all(workdir: Path, names: Iterable[str] | None = None, *, pace: Pace = SMOKE,
                  network: Impairments | None = None) -> AsyncIterator[FaultReport]:
    """Run the scenarios (all, or those named) in order; each report as soon as it is made."""
    wanted = set(names) if names is not None else set(SHARED_WORLD_SCENARIOS) | set(OWN_LAB_SCENARIOS)
    shared = [scenario for name, scenario in SHARED_WORLD_SCENARIOS.items() if name in wanted]
    if shared:
        async with Lab(workdir / "shared", pace=pace, network=network) as lab:
            world = await standalone_world(lab)
            for scenario in shared:
                yield await scenario(world)
    for name, own in OWN_LAB_SCENARIOS.items():
        if name in wanted:
            async with Lab(workdir / name, pace=pace, network=network) as lab:
                yield await own(lab)

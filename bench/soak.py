"""Soak benchmark: signed-in traffic for N minutes, with revocations, reloads and faults on the way.

Starts Redis, the demo IdP (with ``--users`` users of its own), an upstream and
``ztproxy run --workers N`` (Redis sessions, the admin API on with a token file, four
routes with different policies), signs every user in through the real IdP, then runs a
bounded concurrent load (a new connection per request, so every worker gets some) over
the routes with those sessions. Every 30 s (``--every``) one event, in turn (so a fault
every 90 s):

- revoke: every session of one user through the admin API
  (``POST /admin/sessions/revoke {"user": ...}``); that user's old cookie keeps being
  used until a 401 is seen more than 2 s after the revocation, then the user signs in
  again and the load takes the new cookie;
- reload: the config file is rewritten (one more public route, another ``read_timeout``
  on ``app``) and the supervisor gets SIGHUP; every worker must log ``config_reloaded``
  and the new route must answer, then the load uses it too;
- fault, in turn: Redis killed (SIGKILL; restarted from its append-only file), Redis
  frozen (SIGSTOP), the IdP stopped, each for FAULT_OUTAGE seconds; then the load must get
  a normal answer again. The restarted IdP has forgotten its grants (so each session's
  next refresh would end it): every user signs in again and the load takes the new cookies.

    .venv/bin/python bench/soak.py                     # 2 minutes, 2 workers, 3 users
    .venv/bin/python bench/soak.py --minutes 10 --workers 2 --users 5 --keep /tmp/soak

Errors: connection errors, timeouts, 5xx and any other status than the expected one for
the request (200 where the user's policy allows, 403 where it does not, 200 on the public
routes), except the 401s a revoked (or retired) session gets and the fail-closed 503s
(``session-store-unavailable``) of a request that overlapped a Redis fault (up to
FAULT_GRACE after it), both counted apart. Wrongly allowed: a request of a revoked session
sent more than 2 s (``cache_ttl`` 1 s, plus margin) after its revocation that got 200, or
a signed-in 200 sent while Redis was away, later than ``cache_ttl`` after it went and
``store_timeout`` before its restart began (served from a copy too old). The report gives both
(each must be 0), requests, req/s, the events done, the RSS of the ztproxy processes
(supervisor + workers) after the warm-up and at the end (growth must stay under
MAX_RSS_GROWTH), and Redis's memory per session (``MEMORY USAGE`` of the session keys and
their indexes, over the sessions). Exit status 1 when errors, wrongly allowed or a failed
check. Needs redis-server and Node.js with the project's node_modules (the demo IdP).
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import signal
import sys
import tempfile
import time
from collections import Counter
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # the lab lives with the tests

from processes import tree_rss_bytes  # noqa: E402  (bench/ is on sys.path: this is a script there)

from tests.conftest import ProxyProcess, free_port  # noqa: E402
from tests.support.faults import CLIENT_ID, CLIENT_SECRET, COOKIE_NAME, Lab, Load, Probe, Sample  # noqa: E402
from tests.support.redis import RedisServer  # noqa: E402
from tests.support.user_agent import UserAgent  # noqa: E402
from ztproxy.demo_idp import DemoIdp, IdpClient, IdpUser  # noqa: E402

CACHE_TTL = 1  # seconds a worker may trust its local copy of a session
REVOCATION_BOUND = 2.0  # cache_ttl plus margin: a revoked session's 200 after this is wrongly allowed
EVENT_EVERY = 30.0  # seconds between events
EVENT_ROOM = 10.0  # no event starts later than this before the end
WARMUP = 5.0  # seconds of load before the first RSS sample
CLIENT_TIMEOUT = 10.0  # per request of the load
SIGN_IN_TIMEOUT = 30.0
RELOAD_TIMEOUT = 15.0  # until every worker logged config_reloaded
REVOKED_SEEN_TIMEOUT = 15.0  # until a 401 of the revoked cookie past the bound is seen
STORE_TIMEOUT = 0.5
FAULTS = ("redis killed", "redis frozen", "idp down")
FAULT_OUTAGE = 5.0  # seconds each fault lasts
FAULT_GRACE = 1.0  # after a fault, a request may still meet it (the IdP's view, a reconnect)
RECOVERY_TIMEOUT = 15.0  # until the load gets a normal answer again after a fault
STALE_MARGIN = 0.1  # the proxy times its cache by the wall clock, the load by the monotonic one
MAX_RSS_GROWTH = 0.05  # from after the warm-up to the end
SETUP_SLACK = 600.0  # the whole run is bounded by the duration plus this
NAMES = ("alice", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan")
MIB = 1024 * 1024


class SoakFailed(Exception):
    """A step of the soak could not be done (sign-in, revocation, reload)."""


def soak_users(count: int) -> list[IdpUser]:
    """Users of the soak's IdP: every other one in group payroll; no TOTP, so sign-ins can repeat."""
    return [IdpUser(username=name, password=f"{name}-soak-password", email=f"{name}@corp.example",
                    name=name.title(), groups=("employees", "payroll") if index % 2 else ("employees",))
            for index, name in enumerate(NAMES[:count])]


def team(users: list[IdpUser]) -> list[IdpUser]:
    return users[::2]  # the users named on the team route


def expected_status(user: IdpUser, route: str, users: list[IdpUser]) -> int:
    """What a signed-in user gets on a route: 200 where the policy allows, else 403 (no step-up here)."""
    if route == "payroll":
        return 200 if "payroll" in user.groups else 403
    if route == "team":
        return 200 if user in team(users) else 403
    return 200


@dataclass(frozen=True)
class ProxySetup:
    """What the proxy's config is made of; :meth:`yaml` renders it for the n-th reload."""

    port: int
    admin_port: int
    token_file: Path
    issuer: str
    redis_url: str
    cookie_secret: str  # the same in every version: a reload must not sign everyone out
    upstream: str
    users: list[IdpUser]

    def yaml(self, reloads: int) -> str:
        """Each reload adds a public route extra-N and changes app's read_timeout."""
        members = ", ".join(user.email for user in team(self.users))
        extra = "".join(f"  - {{name: extra-{n}, path: /extra-{n}, upstream: '{self.upstream}', "
                        f"allow: [{{public: true}}]}}\n" for n in range(1, reloads + 1))
        return f"""
server:
  listen: 127.0.0.1:{self.port}
  admin_listen: 127.0.0.1:{self.admin_port}
  admin_token_file: {self.token_file}
  shutdown_grace: 10s
identity_providers:
  - {{name: demo, issuer: '{self.issuer}', client_id: {CLIENT_ID}, client_secret: {CLIENT_SECRET},
     scopes: [openid, email, profile, groups]}}
sessions:
  store: '{self.redis_url}'
  cookie_secrets: [{self.cookie_secret}]
  cache_ttl: {CACHE_TTL}s
  store_timeout: {STORE_TIMEOUT}s
risk:
  # The load sends each session to routes its user may not open (403 by design), and signs
  # users in again and again from one address: logged, not locked.
  rules: {{denial-burst: log, sign-in-burst: log}}
routes:
  - {{name: app, path: /app, upstream: '{self.upstream}', read_timeout: {30 + reloads}s,
     allow: [{{email_domains: [corp.example]}}]}}
  - {{name: payroll, path: /payroll, upstream: '{self.upstream}', allow: [{{groups: [payroll]}}]}}
  - {{name: team, path: /team, upstream: '{self.upstream}', allow: [{{users: [{members}]}}]}}
  - {{name: public, path: /public, upstream: '{self.upstream}', allow: [{{public: true}}]}}
{extra}"""


@dataclass
class Session:
    """One sign-in of a user; the revocation times are time.monotonic() around the admin call."""

    user: IdpUser
    generation: int
    cookie: str
    revoke_sent: float | None = None
    revoke_done: float | None = None
    retired: float | None = None  # replaced after an IdP restart: its next refresh may end it


@dataclass(frozen=True)
class Fault:
    name: str
    began: float  # time.monotonic() when the dependency went away
    restoring: float  # when its restart (or SIGCONT) began: it may answer from then on
    ended: float  # when it was back for sure

    @property
    def store(self) -> bool:
        return self.name.startswith("redis")


@dataclass(frozen=True)
class Kind:
    """What a load probe's ``kind`` stands for: whose session (None: anonymous), which route, what answer."""

    session: Session | None
    route: str
    expected: int


def classify(sample: Sample, kind: Kind, faults: list[Fault]) -> str:
    """``ok``, ``revoked`` (the expected 401 of a revoked or retired session), ``fail-closed`` (the
    503 of a request that met a Redis fault), ``wrongly-allowed`` or ``error``."""
    session = kind.session
    if session is not None and session.revoke_sent is not None and sample.ended >= session.revoke_sent:
        assert session.revoke_done is not None
        late = sample.started > session.revoke_done + REVOCATION_BOUND
        if sample.status == 401:
            return "revoked"
        if late:
            return "wrongly-allowed" if sample.status == 200 else "error"
    if session is not None and session.retired is not None and sample.ended >= session.retired \
            and sample.status == 401:
        return "revoked"
    for fault in faults:
        if not fault.store:
            continue
        if session is not None and sample.status == 200 and \
                fault.began + CACHE_TTL + STALE_MARGIN <= sample.started < fault.restoring - STORE_TIMEOUT:
            return "wrongly-allowed"  # the store was away: served from a copy older than cache_ttl
        if sample.status == 503 and sample.detail == "session-store-unavailable" \
                and sample.ended >= fault.began and sample.started <= fault.ended + FAULT_GRACE:
            return "fail-closed"
    return "ok" if sample.status == kind.expected else "error"


async def sign_in(url: str, user: IdpUser) -> str:
    """The session cookie of a real sign-in of ``user`` at the proxy, through the IdP's pages."""
    async with UserAgent() as agent:
        try:
            final = await asyncio.wait_for(agent.login(url + "/app/", user.username, user.password),
                                           SIGN_IN_TIMEOUT)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise SoakFailed(f"sign-in of {user.username}: {type(exc).__name__} {exc}") from None
        if final.status != 200:
            raise SoakFailed(f"sign-in of {user.username} ended with {final.status}: {final.text[:200]}")
        cookie = next((str(c.value) for c in agent.cookie_jar if c.key == COOKIE_NAME), None)
    if cookie is None:
        raise SoakFailed(f"sign-in of {user.username} set no {COOKIE_NAME} cookie")
    return cookie


class LogWatcher:
    """Counts lines with an event in the proxy's log, reading only what was appended since."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self.counts: Counter[str] = Counter()

    def count(self, event: str) -> int:
        with open(self.path, "rb") as log:
            log.seek(self._offset)
            data = log.read()
        complete = data[:data.rfind(b"\n") + 1]  # a line still being written is read next time
        self._offset += len(complete)
        for line in complete.decode("utf-8", errors="replace").splitlines():
            for name in ("config_reloaded", "config_reload_failed", "worker_exited"):
                if f'"{name}"' in line:
                    self.counts[name] += 1
        return self.counts[event]


@dataclass
class Soak:
    """The running soak: the proxy, the sessions in use, the load and what the events did."""

    url: str
    admin_url: str
    admin_token: str
    proxy: ProxyProcess
    redis: RedisServer
    idp: DemoIdp
    config_path: Path
    setup: ProxySetup
    users: list[IdpUser]
    workers: int
    log: LogWatcher
    load: Load | None = None
    kinds: dict[str, Kind] = field(default_factory=dict)
    current: dict[str, Session] = field(default_factory=dict)
    extra_routes: list[str] = field(default_factory=list)
    revocations: int = 0
    reloads: int = 0
    faults: list[Fault] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def probes(self) -> list[Probe]:
        """Per user: app, payroll and team with the user's current session, and one anonymous public."""
        found: list[Probe] = []
        for user in self.users:
            session = self.current[user.username]
            for route in ("app", "payroll", "team"):
                name = f"{user.username}#{session.generation} {route}"
                self.kinds[name] = Kind(session, route, expected_status(user, route, self.users))
                found.append(Probe(name, f"/{route}/soak", session.cookie))
            found.append(self._anonymous("public"))
        found.extend(self._anonymous(route) for route in self.extra_routes)
        return found

    def _anonymous(self, route: str) -> Probe:
        self.kinds[f"anonymous {route}"] = Kind(None, route, 200)
        return Probe(f"anonymous {route}", f"/{route}/soak")

    def use_current_sessions(self) -> None:
        assert self.load is not None
        self.load.probes[:] = self.probes()  # in place: the load's tasks read this very list

    async def sign_in(self, user: IdpUser) -> None:
        previous = self.current.get(user.username)
        cookie = await sign_in(self.url, user)
        self.current[user.username] = Session(user, 0 if previous is None else previous.generation + 1, cookie)

    async def revoke(self, user: IdpUser) -> str:
        session = self.current[user.username]
        assert self.load is not None
        first_index = len(self.load.samples)
        sent = time.monotonic()
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as client:
                async with client.post(self.admin_url + "/admin/sessions/revoke", json={"user": user.username},
                                       headers={"Authorization": f"Bearer {self.admin_token}"}) as response:
                    status, body = response.status, await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise SoakFailed(f"revoking {user.username}: {type(exc).__name__} {exc}") from None
        if status != 200 or not isinstance(body, dict) or body.get("revoked", 0) < 1:
            raise SoakFailed(f"revoking {user.username}: {status} {body}")
        session.revoke_sent, session.revoke_done = sent, time.monotonic()
        self.revocations += 1
        # The old cookie stays in the load until it is refused past the bound: a 200 there would show.
        seen = await self.wait_for(f"{user.username}#{session.generation} app", 401,
                                   since=session.revoke_done + REVOCATION_BOUND, within=REVOKED_SEEN_TIMEOUT)
        if seen is None:
            self.problems.append(f"revocation of {user.username}: no 401 seen within {REVOKED_SEEN_TIMEOUT:g}s")
        await self.sign_in(user)
        self.use_current_sessions()
        prefix = f"{user.username}#{session.generation} "
        refusals = [sample.ended for sample in self.load.samples[first_index:]
                    if sample.status == 401 and sample.kind.startswith(prefix)]
        refused = f"{min(refusals) - sent:.2f}s" if refusals else "-"
        return (f"revoked {user.username} ({body['revoked']} session(s)), first 401 {refused} after the call, "
                f"signed in again")

    async def reload(self) -> str:
        before = self.log.count("config_reloaded")
        self.reloads += 1
        self.config_path.write_text(self.setup.yaml(self.reloads), encoding="utf-8")
        started = time.monotonic()
        self.proxy.signal(signal.SIGHUP)
        deadline = started + RELOAD_TIMEOUT
        while time.monotonic() < deadline:
            if self.log.count("config_reloaded") >= before + self.workers:
                break
            await asyncio.sleep(0.1)
        reloaded = self.log.count("config_reloaded") - before
        if reloaded < self.workers:
            self.problems.append(f"reload {self.reloads}: {reloaded} of {self.workers} workers reloaded "
                                 f"({self.log.counts['config_reload_failed']} config_reload_failed in the log)")
            return f"reload {self.reloads} NOT applied"
        route = f"extra-{self.reloads}"
        statuses = [await status_of(f"{self.url}/{route}/soak") for _ in range(4 * self.workers)]
        if any(status != 200 for status in statuses):
            self.problems.append(f"reload {self.reloads}: new route answered {statuses}")
        self.extra_routes.append(route)
        self.use_current_sessions()
        return f"reload {self.reloads}: {reloaded} workers in {time.monotonic() - started:.2f}s, /{route} live"

    async def fault(self, name: str) -> str:
        """Take a dependency away for FAULT_OUTAGE seconds, bring it back, wait for a normal answer."""
        assert self.load is not None
        began = time.monotonic()
        if name == "redis killed":
            await asyncio.to_thread(self.redis.stop, kill=True)
            await asyncio.sleep(FAULT_OUTAGE)
            restoring = time.monotonic()
            await asyncio.to_thread(self.redis.start)
        elif name == "redis frozen":
            await asyncio.to_thread(self.redis.freeze)
            await asyncio.sleep(FAULT_OUTAGE)
            restoring = time.monotonic()
            await asyncio.to_thread(self.redis.thaw)
        else:
            await self.idp.stop()
            await asyncio.sleep(FAULT_OUTAGE)
            restoring = time.monotonic()
            await self.idp.start()  # same port and keys; its grants are gone
        ended = time.monotonic()
        self.faults.append(Fault(name, began, restoring, ended))
        user = self.users[0]
        probe = f"{user.username}#{self.current[user.username].generation} app"
        normal = await self.wait_for(probe, 200, since=ended, within=RECOVERY_TIMEOUT)
        if normal is None:
            self.problems.append(f"{name}: no normal answer within {RECOVERY_TIMEOUT:g}s after it ended")
        if name == "idp down":
            for session in self.current.values():
                session.retired = time.monotonic()
            for each in self.users:
                await self.sign_in(each)
            self.use_current_sessions()
        recovered = "-" if normal is None else f"{normal.ended - ended:.2f}s"
        fail_closed = sum(1 for sample in self.load.samples if sample.started <= ended + FAULT_GRACE
                          and sample.ended >= began and sample.status == 503)
        return (f"{name} for {ended - began:.1f}s: {fail_closed} fail-closed 503s, normal again {recovered} "
                f"after" + (", every user signed in again" if name == "idp down" else ""))

    async def wait_for(self, kind: str, status: int, *, since: float, within: float) -> Sample | None:
        """The first sample of ``kind`` with ``status`` sent after ``since`` (not yet past); None after ``within`` s."""
        assert self.load is not None
        deadline = time.monotonic() + within
        scanned = len(self.load.samples)  # answers come in as they end: one sent after since is not in yet
        while time.monotonic() < deadline:
            samples = self.load.samples
            for sample in samples[scanned:]:
                if sample.kind == kind and sample.status == status and sample.started >= since:
                    return sample
            scanned = len(samples)
            await asyncio.sleep(0.05)
        return None


async def status_of(url: str) -> int:
    """GET on a new connection (so each may reach another worker); 0 for no answer."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True),
                                     timeout=aiohttp.ClientTimeout(total=5)) as client:
        try:
            async with client.get(url) as response:
                await response.read()
                return response.status
        except (aiohttp.ClientError, TimeoutError):
            return 0


def redis_memory_per_session(redis: RedisServer) -> str:
    """MEMORY USAGE of the session keys and of the indexes that list them, over the sessions."""
    with redis.client() as client:
        sessions = list(client.scan_iter(match="s:*", count=1000))
        indexes = [key for key in client.scan_iter(count=1000) if not key.startswith(b"s:")]
        session_bytes = sum(client.memory_usage(key) or 0 for key in sessions)
        index_bytes = sum(client.memory_usage(key) or 0 for key in indexes)
        used = int(client.info("memory")["used_memory"])
    if not sessions:
        return "no session in Redis at the end"
    return (f"{(session_bytes + index_bytes) / len(sessions) / 1024:.1f} KiB per session "
            f"({len(sessions)} sessions: {session_bytes / len(sessions):.0f} B each, plus "
            f"{index_bytes} B in {len(indexes)} other keys); used_memory {used / MIB:.1f} MiB")


def rss_line(rss: dict[int, int]) -> str:
    parts = " + ".join(f"{value / MIB:.1f}" for value in rss.values())
    return f"{sum(rss.values()) / MIB:.1f} MiB ({len(rss)} processes: {parts})"


async def run(args: argparse.Namespace, workdir: Path) -> int:
    duration = args.minutes * 60
    async with Lab(workdir) as lab, AsyncExitStack() as stack:
        # Persistent, as a production Redis is: a kill loses nothing acknowledged.
        redis = lab.redis.start("appendonly yes", "appendfsync always")
        upstream = await lab.upstream()
        port, admin_port = free_port(), free_port()
        url = f"http://127.0.0.1:{port}"
        users = soak_users(args.users)
        idp_dir = workdir / "idp"
        idp_dir.mkdir(parents=True, exist_ok=True)
        idp = DemoIdp(workdir=idp_dir, port=free_port(), users=users, clients=[IdpClient(
            client_id=CLIENT_ID, client_secret=CLIENT_SECRET, redirect_uris=(f"{url}/.ztproxy/callback",))])
        await stack.enter_async_context(idp)
        token = secrets.token_urlsafe(32)
        token_file = workdir / "admin-token"
        token_file.write_text(token, encoding="utf-8")
        token_file.chmod(0o600)
        setup = ProxySetup(port=port, admin_port=admin_port, token_file=token_file, issuer=idp.issuer,
                           redis_url=redis.url, cookie_secret=secrets.token_hex(32), upstream=upstream, users=users)
        proxy = await lab.proxy(setup.yaml(0), port=port, admin_port=admin_port, workers=args.workers)
        soak = Soak(url=url, admin_url=proxy.admin_url, admin_token=token, proxy=proxy, redis=redis, idp=idp,
                    config_path=workdir / "ztproxy-0.yaml", setup=setup, users=users, workers=args.workers,
                    log=LogWatcher(proxy.log_path))
        for user in users:
            await soak.sign_in(user)
        soak.load = Load(url, soak.probes(), tasks=args.tasks, pause=args.pause, client_timeout=CLIENT_TIMEOUT,
                         max_seconds=WARMUP + duration + SETUP_SLACK).start()
        began = time.monotonic()
        print(f"soak: {args.minutes:g} min, {args.workers} workers, {len(users)} users, {args.tasks} client tasks;"
              f" work dir {workdir}", file=sys.stderr, flush=True)
        await asyncio.sleep(WARMUP)
        rss_start = tree_rss_bytes(proxy.process.pid)
        print(f"  RSS after warm-up: {rss_line(rss_start)}", file=sys.stderr, flush=True)
        end = began + WARMUP + duration
        events = max(0, int((duration - EVENT_ROOM) // args.every))
        try:
            for index in range(events):
                await asyncio.sleep(max(0.0, began + WARMUP + (index + 1) * args.every - time.monotonic()))
                if index % 3 == 0:
                    done = await soak.revoke(users[(index // 3) % len(users)])
                elif index % 3 == 1:
                    done = await soak.reload()
                else:
                    done = await soak.fault(FAULTS[(index // 3) % len(FAULTS)])
                rss_now = sum(tree_rss_bytes(proxy.process.pid).values())
                print(f"  {time.monotonic() - began:6.1f}s {done} (RSS {rss_now / MIB:.1f} MiB)",
                      file=sys.stderr, flush=True)
                if proxy.process.poll() is not None:
                    raise SoakFailed(f"ztproxy exited with {proxy.process.returncode}")
            await asyncio.sleep(max(0.0, end - time.monotonic()))
        except SoakFailed as exc:
            soak.problems.append(str(exc))
        rss_end = tree_rss_bytes(proxy.process.pid)
        samples = await soak.load.finish()
        elapsed = time.monotonic() - began
        if proxy.process.poll() is not None:
            soak.problems.append(f"ztproxy exited with {proxy.process.returncode}")
        if soak.log.count("worker_exited"):
            soak.problems.append(f"{soak.log.counts['worker_exited']} worker(s) exited and were restarted")
        return report(soak, samples, elapsed, rss_start, rss_end, redis_memory_per_session(redis))


def report(soak: Soak, samples: list[Sample], elapsed: float, rss_start: dict[int, int],
           rss_end: dict[int, int], redis_memory: str) -> int:
    outcomes = Counter(classify(sample, soak.kinds[sample.kind], soak.faults) for sample in samples)
    by_route = Counter(soak.kinds[sample.kind].route for sample in samples)
    wrong = Counter((sample.kind, sample.status, sample.detail) for sample in samples
                    if classify(sample, soak.kinds[sample.kind], soak.faults) in ("error", "wrongly-allowed"))
    growth = (sum(rss_end.values()) - sum(rss_start.values())) / MIB
    growth_share = growth * MIB / max(1, sum(rss_start.values()))
    if growth_share >= MAX_RSS_GROWTH:
        soak.problems.append(f"RSS grew {growth_share:.1%}, more than {MAX_RSS_GROWTH:.0%}")
    lines = [
        f"duration          {elapsed:.1f} s (incl. {WARMUP:g} s warm-up)",
        f"requests          {len(samples)} ({len(samples) / elapsed:.1f} req/s); by route: "
        + ", ".join(f"{route} {count}" for route, count in sorted(by_route.items())),
        f"errors            {outcomes['error']}",
        f"wrongly allowed   {outcomes['wrongly-allowed']}",
        f"fail-closed (503) {outcomes['fail-closed']} (requests that met a Redis fault)",
        f"revoked (401)     {outcomes['revoked']} (requests of revoked sessions, refused as they must be)",
        f"revocations       {soak.revocations}",
        f"reloads           {soak.reloads}",
        f"faults            {len(soak.faults)}: " + ", ".join(
            f"{name} {count}" for name, count in sorted(Counter(f.name for f in soak.faults).items())),
        f"ztproxy RSS start {rss_line(rss_start)}",
        f"ztproxy RSS end   {rss_line(rss_end)}",
        f"RSS growth        {growth:+.1f} MiB ({growth_share:+.1%})",
        f"Redis memory      {redis_memory}",
        f"slowest request   {max((s.elapsed for s in samples), default=0.0):.3f} s",
    ]
    lines += [f"problem: {problem}" for problem in soak.problems]
    lines += [f"  unexpected: {kind} -> {status} {detail}: {count}"
              for (kind, status, detail), count in wrong.most_common(20)]
    print("\n".join(lines))
    failed = outcomes["error"] or outcomes["wrongly-allowed"] or soak.problems
    print("soak: FAILED" if failed else "soak: ok")
    return 1 if failed else 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--minutes", type=float, default=2.0, help="length of the load after warm-up (default 2)")
    parser.add_argument("--workers", type=int, default=2, help="ztproxy worker processes (default 2)")
    parser.add_argument("--users", type=int, default=3, help=f"signed-in users, 1-{len(NAMES)} (default 3)")
    parser.add_argument("--tasks", type=int, default=8, help="concurrent client tasks (default 8)")
    parser.add_argument("--pause", type=float, default=0.01, help="seconds between a task's requests (default 0.01)")
    parser.add_argument("--every", type=float, default=EVENT_EVERY,
                        help=f"seconds between events (default {EVENT_EVERY:g}); faults last {FAULT_OUTAGE:g} s")
    parser.add_argument("--keep", type=Path, help="work in this directory and keep its configs and logs")
    args = parser.parse_args(argv)
    if not 0 < args.minutes <= 24 * 60:
        parser.error("--minutes must be above 0 and at most a day")
    if not 1 <= args.users <= len(NAMES):
        parser.error(f"--users must be 1-{len(NAMES)}")
    if not 1 <= args.workers <= 16 or not 1 <= args.tasks <= 256:
        parser.error("--workers must be 1-16 and --tasks 1-256")
    if args.pause < 0:
        parser.error("--pause must not be negative")
    if args.every < FAULT_OUTAGE + 5:
        parser.error(f"--every must be at least {FAULT_OUTAGE + 5:g} s (a fault and its recovery)")
    return args


async def bounded(args: argparse.Namespace, workdir: Path) -> int:
    try:
        return await asyncio.wait_for(run(args, workdir), args.minutes * 60 + WARMUP + SETUP_SLACK)
    except (SoakFailed, RuntimeError, TimeoutError) as exc:
        print(f"soak: could not run: {type(exc).__name__}: {exc}")
        return 1


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.keep is not None:
        arguments.keep.mkdir(parents=True, exist_ok=True)
        sys.exit(asyncio.run(bounded(arguments, arguments.keep)))
    with tempfile.TemporaryDirectory(prefix="ztproxy-soak-") as temporary:
        sys.exit(asyncio.run(bounded(arguments, Path(temporary))))

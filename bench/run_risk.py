"""Session risk under load: a stolen cookie replayed from another network while its owner browses.

One invocation starts Redis, the nginx upstream of ``run.py``, the demo OpenID Provider and
two ztproxy replicas sharing the Redis (the default risk rules: concurrent-use revokes). The
owner signs in from 127.0.1.1 and keeps browsing with several connections spread over both
replicas; after a warm-up a thief replays the owner's cookie (and User-Agent) from 127.0.2.1,
as fast as it can, on both replicas. Reported: the time from the thief's first request to
containment (the first refusal of that session anywhere), how many of the thief's requests
were served, the owner's requests served meanwhile, and the proxies' own
``ztproxy_risk_detection_seconds``. Exit 0 when the session was contained and no request
with it was served after containment, on any replica.

    .venv/bin/python bench/run_risk.py [--owner-connections 16] [--warmup 2] [--after 2]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import secrets
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from auth_world import EMAIL_DOMAIN, USER, ZTPROXY_COOKIE, start_redis
from processes import ManagedProcess, TargetFailed, free_port, wait_until_ok
from targets import ZTPROXY_READY_TIMEOUT, find_ztproxy, start_upstream, ztproxy_listener_yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # tests.support.user_agent: the tests' browserless login driver

from tests.support.user_agent import UserAgent  # noqa: E402
from ztproxy.demo_idp import DemoIdp, IdpClient  # noqa: E402

OWNER_ADDRESS, THIEF_ADDRESS = "127.0.1.1", "127.0.2.1"
_DETECTION_RE = re.compile(r'^ztproxy_risk_detection_seconds_(sum|count)\{signal="concurrent-use"\} (\S+)$',
                           re.MULTILINE)


@dataclass
class Tally:
    served: int = 0
    refused: int = 0
    served_after_containment: int = 0


@dataclass
class Run:
    contained_at: float | None = None  # monotonic: the first refusal of the session, anyone's
    thief_started: float | None = None
    owner: Tally = field(default_factory=Tally)
    thief: Tally = field(default_factory=Tally)

    contained: asyncio.Event = field(default_factory=asyncio.Event)

    def note(self, tally: Tally, status: int, sent: float) -> None:
        now = time.monotonic()
        if status == 200:
            tally.served += 1
            if self.contained_at is not None and sent > self.contained_at:  # sent after it, not in flight
                tally.served_after_containment += 1
        else:
            tally.refused += 1
            if self.contained_at is None and self.thief_started is not None:
                self.contained_at = now
                self.contained.set()


def replica_config(workdir: Path, name: str, port: int, admin_port: int, issuer: str, client: IdpClient,
                   redis_port: int, upstream: str, cookie_secret: str, extra: str = "") -> Path:
    """One replica's config; ``extra``: more top-level sections (``run_signals.py``'s)."""
    path = workdir / f"ztproxy-{name}.yaml"
    path.write_text(ztproxy_listener_yaml(port, admin_port) + f"""\
identity_providers:
  - {{name: demo, issuer: '{issuer}', client_id: {client.client_id}, client_secret: {client.client_secret}}}
sessions:
  store: redis://127.0.0.1:{redis_port}/0
  cookie_secrets: [{cookie_secret}]
  cookie_name: {ZTPROXY_COOKIE}
{extra}routes:
  - {{name: app, upstream: '{upstream}', allow: [{{email_domains: [{EMAIL_DOMAIN}]}}]}}
""", encoding="utf-8")
    return path


async def browse(session: aiohttp.ClientSession, urls: list[str], run: Run, tally: Tally, stop: asyncio.Event) -> None:
    turn = 0
    while not stop.is_set():
        sent = time.monotonic()
        async with session.get(urls[turn % len(urls)], allow_redirects=False,
                               headers={"Accept": "application/json"}) as response:
            await response.read()
            run.note(tally, response.status, sent)
        turn += 1


async def detection_seconds(admin_urls: list[str]) -> str:
    found = []
    async with aiohttp.ClientSession() as client:
        for url in admin_urls:
            async with client.get(url + "/metrics") as response:
                values = dict(_DETECTION_RE.findall(await response.text()))
            if float(values.get("count", 0)):
                found.append(f"{float(values['sum']) / float(values['count']):.3f} s")
    return ", ".join(found) or "none recorded"


async def main(args: argparse.Namespace) -> int:
    ztproxy = find_ztproxy(REPO_ROOT)
    if ztproxy is None:
        raise TargetFailed("ztproxy executable not found (.venv/bin/ztproxy or PATH)")
    with tempfile.TemporaryDirectory(prefix="ztproxy-risk-bench-") as directory:
        workdir = Path(directory)
        async with AsyncExitStack() as stack:
            redis_process, redis_port = start_redis(workdir)
            stack.callback(redis_process.stop)
            upstream_process, upstream = start_upstream(workdir)
            stack.callback(upstream_process.stop)
            ports, admin_ports, idp_port = [free_port(), free_port()], [free_port(), free_port()], free_port()
            urls = [f"http://127.0.0.1:{port}" for port in ports]
            client = IdpClient(client_id="ztproxy", client_secret=secrets.token_urlsafe(24),
                               redirect_uris=(f"{urls[0]}/.ztproxy/callback",))
            idp = DemoIdp(workdir=workdir / "idp", port=idp_port, clients=[client], users=[USER])
            await stack.enter_async_context(idp)
            cookie_secret = secrets.token_hex(32)
            for name, port, admin_port in zip("ab", ports, admin_ports, strict=True):
                config = replica_config(workdir, name, port, admin_port, idp.issuer, client, redis_port, upstream,
                                        cookie_secret)
                process = ManagedProcess.spawn(f"ztproxy-{name}", [ztproxy, "run", "-c", str(config)], workdir,
                                               stdout_path=workdir / f"ztproxy-{name}.log")
                stack.callback(process.stop)
                wait_until_ok(f"http://127.0.0.1:{admin_port}/readyz", [process], ZTPROXY_READY_TIMEOUT)
            owner = await stack.enter_async_context(UserAgent(local_address=OWNER_ADDRESS))
            page = await owner.login(urls[0] + "/", USER.username, USER.password)
            if page.status != 200:
                raise TargetFailed(f"signing in ended with status {page.status}")
            cookie = next(c.value for c in owner.cookie_jar if c.key == ZTPROXY_COOKIE)
            thief = await stack.enter_async_context(aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(local_addr=(THIEF_ADDRESS, 0)),
                headers={"Cookie": f"{ZTPROXY_COOKIE}={cookie}",
                         "User-Agent": owner.session.headers.get("User-Agent", aiohttp.http.SERVER_SOFTWARE)}))

            run, stop = Run(), asyncio.Event()
            owners = [asyncio.create_task(browse(owner.session, [f"{url}/" for url in urls[i % 2:] + urls[:i % 2]],
                                                 run, run.owner, stop)) for i in range(args.owner_connections)]
            await asyncio.sleep(args.warmup)
            run.thief_started = time.monotonic()
            thieving = asyncio.create_task(browse(thief, [f"{url}/" for url in reversed(urls)], run, run.thief, stop))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(run.contained.wait(), 30.0)
            await asyncio.sleep(args.after)  # everyone keeps trying: nothing may be served any more
            stop.set()
            await asyncio.gather(*owners, thieving, return_exceptions=True)
            detected = await detection_seconds([f"http://127.0.0.1:{port}" for port in admin_ports])

    contained = run.contained_at is not None
    print(f"owner: {args.owner_connections} connections from {OWNER_ADDRESS}, thief: 1 from {THIEF_ADDRESS}, "
          f"2 replicas on one Redis")
    if contained and run.thief_started is not None and run.contained_at is not None:
        print(f"time to containment: {run.contained_at - run.thief_started:.3f} s "
              f"(the proxies' detection: {detected})")
    else:
        print("NOT CONTAINED within 30 s")
    print(f"thief requests served: {run.thief.served} (refused: {run.thief.refused})")
    print(f"owner requests served: {run.owner.served} (refused: {run.owner.refused})")
    after = run.thief.served_after_containment + run.owner.served_after_containment
    print(f"requests with the session sent after containment and served: {after}")
    return 0 if contained and after == 0 else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--owner-connections", type=int, default=16)
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of the owner alone (default 2)")
    parser.add_argument("--after", type=float, default=2.0, help="seconds of trying after containment (default 2)")
    sys.exit(asyncio.run(main(parser.parse_args())))

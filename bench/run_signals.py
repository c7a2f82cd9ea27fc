"""Security signals under load: how fast every replica refuses a session a transmitter revoked.

One invocation starts Redis, the nginx upstream of ``run.py``, the demo OpenID Provider, the
demo's Shared Signals transmitter (``python -m ztproxy.demo.transmitter``, a process of its
own) and three ztproxy processes sharing the Redis, each receiving the transmitter's events.
Bystanders (signed in, never signalled) keep every replica busy with several connections.
Meanwhile, at ``--rate`` signals a second, the transmitter pushes a CAEP ``session-revoked``
(or ``--event``) for one more signed-in user; that user's client asks every replica again and
again from just before the push. Reported, per replica and over all: the time from sending
the push (before its 202: a conservative start) to the first refused request, p50/p99/max;
every request of a signalled user sent later than the push + 1 s and still served (must be
0); bystander requests refused (must be 0); and the processes' own
``ztproxy_signal_enforcement_seconds``. Exit 0 when every replica refused every signalled
session and nothing was served after the push + 1 s.

    .venv/bin/python bench/run_signals.py [--signals 30] [--rate 5] [--load-connections 12]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import secrets
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from auth_world import EMAIL_DOMAIN, USER, start_redis
from processes import ManagedProcess, TargetFailed, free_port, wait_until_ok
from run_risk import replica_config
from targets import ZTPROXY_READY_TIMEOUT, find_python, find_ztproxy, start_upstream

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # tests.support.user_agent: the tests' browserless login driver

from tests.support.user_agent import UserAgent  # noqa: E402
from ztproxy.demo_idp import DemoIdp, IdpClient, IdpUser  # noqa: E402

REPLICAS = 3
AUDIENCE = "https://ztproxy.bench.example/ssf"
CAEP = "https://schemas.openid.net/secevent/caep/event-type/"
EVENTS = {"session-revoked": CAEP + "session-revoked", "credential-change": CAEP + "credential-change",
          "account-disabled": "https://schemas.openid.net/secevent/risc/event-type/account-disabled"}
DEADLINE = 1.0  # seconds after the push: nothing may be served with a signalled session any more
WATCH_AFTER = 1.5  # seconds after the push a signalled user keeps asking (past the deadline)
GIVE_UP = 30.0  # a replica that has not refused by then never will
_ENFORCEMENT_RE = re.compile(r'^ztproxy_signal_enforcement_seconds_(sum|count)\{event="([a-z-]+)"\} (\S+)$',
                             re.MULTILINE)
TARGET = 0.1  # seconds from the 202: every replica refuses within it at p99 (a bucket bound of the histogram)
_WITHIN_TARGET_RE = re.compile(r'^ztproxy_signal_enforcement_seconds_bucket\{event="([a-z-]+)",le="0\.1"\} (\S+)$',
                               re.MULTILINE)


@dataclass
class Signalled:
    """One signalled user, watched on every replica."""

    agent: UserAgent
    email: str
    sent: float | None = None  # monotonic: when the push was sent
    status: int | None = None  # the receiver's answer to the push
    refused_after: dict[int, float] = field(default_factory=dict)  # replica -> seconds from the push
    served_late: int = 0  # requests sent after the push + DEADLINE and served
    requests: int = 0


@dataclass
class Load:
    served: int = 0
    refused: int = 0


async def status_of(session: aiohttp.ClientSession, url: str) -> int:
    async with session.get(url, allow_redirects=False, headers={"Accept": "application/json"}) as response:
        await response.read()
        return response.status


async def load(agent: UserAgent, urls: list[str], tally: Load, stop: asyncio.Event) -> None:
    turn = 0
    while not stop.is_set():
        if await status_of(agent.session, urls[turn % len(urls)]) == 200:
            tally.served += 1
        else:
            tally.refused += 1
        turn += 1


async def watch(user: Signalled, replica: int, url: str) -> None:
    """Ask ``url`` with the user's session until it is refused and the deadline is past."""
    while True:
        sent = time.monotonic()
        status = await status_of(user.agent.session, url)
        done = time.monotonic()
        user.requests += 1
        if user.sent is None:
            if status != 200:
                raise TargetFailed(f"{user.email} refused by replica {replica} before any signal ({status})")
            continue
        if status == 200 and sent > user.sent + DEADLINE:
            user.served_late += 1
        if status != 200 and replica not in user.refused_after:
            user.refused_after[replica] = done - user.sent
        if (replica in user.refused_after and done > user.sent + WATCH_AFTER) or done > user.sent + GIVE_UP:
            return
        if replica in user.refused_after:
            await asyncio.sleep(0.05)  # refused: only checking it stays so until the deadline is past


async def signal(user: Signalled, urls: list[str], push: str, control_token: str, event: str, at: float) -> None:
    await asyncio.sleep(max(0.0, at - 0.3 - time.monotonic()))
    watchers = [asyncio.create_task(watch(user, index, url)) for index, url in enumerate(urls)]
    await asyncio.sleep(max(0.0, at - time.monotonic()))
    order = {"event": event, "sub_id": {"format": "email", "email": user.email},
             "payload": {"event_timestamp": int(time.time())}}
    async with aiohttp.ClientSession() as client:
        user.sent = time.monotonic()
        async with client.post(push, json=order, headers={"Authorization": f"Bearer {control_token}"}) as response:
            user.status = int((await response.json())["status"])
    await asyncio.gather(*watchers)


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]  # nearest rank


def describe(values: list[float]) -> str:
    if not values:
        return "no refusal"
    return (f"p50 {quantile(values, 0.5) * 1000:.1f} ms, p99 {quantile(values, 0.99) * 1000:.1f} ms, "
            f"max {max(values) * 1000:.1f} ms ({len(values)} signals)")


async def enforcement(admin_urls: list[str]) -> tuple[list[str], bool]:
    """Each process's own timing from the 202 (its histogram), and whether 99% fell within TARGET."""
    lines, on_target = [], True
    async with aiohttp.ClientSession() as client:
        for index, url in enumerate(admin_urls):
            async with client.get(url + "/metrics") as response:
                text = await response.text()
            found: dict[str, dict[str, float]] = {}
            for kind, event, value in _ENFORCEMENT_RE.findall(text):
                found.setdefault(event, {})[kind] = float(value)
            for event, value in _WITHIN_TARGET_RE.findall(text):
                found.setdefault(event, {})["within"] = float(value)
            for event, values in sorted(found.items()):
                if values.get("count"):
                    share = values.get("within", 0.0) / values["count"]
                    on_target = on_target and share >= 0.99
                    lines.append(f"  replica {index}: {event}: {int(values['count'])} timed, "
                                 f"mean {values['sum'] / values['count'] * 1000:.1f} ms, "
                                 f"{share:.1%} within {TARGET * 1000:.0f} ms")
    return lines, on_target


async def sign_in(url: str, user: IdpUser) -> UserAgent:
    agent = UserAgent()
    page = await agent.login(url, user.username, user.password)
    if page.status != 200:
        await agent.close()
        raise TargetFailed(f"signing {user.username} in ended with status {page.status}")
    return agent


async def main(args: argparse.Namespace) -> int:
    ztproxy = find_ztproxy(REPO_ROOT)
    if ztproxy is None:
        raise TargetFailed("ztproxy executable not found (.venv/bin/ztproxy or PATH)")
    event = EVENTS[args.event]
    targets = [IdpUser(username=f"user{i:03d}", password=secrets.token_urlsafe(12),
                       email=f"user{i:03d}@{EMAIL_DOMAIN}", name=f"User {i}") for i in range(args.signals)]
    with tempfile.TemporaryDirectory(prefix="ztproxy-signals-bench-") as directory:
        workdir = Path(directory)
        async with AsyncExitStack() as stack:
            redis_process, redis_port = start_redis(workdir)
            stack.callback(redis_process.stop)
            upstream_process, upstream = start_upstream(workdir)
            stack.callback(upstream_process.stop)
            transmitter_port = free_port()
            transmitter = f"http://127.0.0.1:{transmitter_port}"
            token, control = secrets.token_hex(16), secrets.token_hex(16)
            transmitting = ManagedProcess.spawn("transmitter", [
                find_python(REPO_ROOT), "-m", "ztproxy.demo.transmitter",
                f"--port={transmitter_port}", f"--token={token}", f"--control-token={control}"], workdir)
            stack.callback(transmitting.stop)
            wait_until_ok(f"{transmitter}/jwks", [transmitting], 15.0)
            ports = [free_port() for _ in range(REPLICAS)]
            admin_ports = [free_port() for _ in range(REPLICAS)]
            urls = [f"http://127.0.0.1:{port}" for port in ports]
            client = IdpClient(client_id="ztproxy", client_secret=secrets.token_urlsafe(24),
                               redirect_uris=(f"{urls[0]}/.ztproxy/callback",))
            idp = DemoIdp(workdir=workdir / "idp", port=free_port(), clients=[client], users=[USER, *targets])
            await stack.enter_async_context(idp)
            cookie_secret = secrets.token_hex(32)
            for index, (port, admin_port) in enumerate(zip(ports, admin_ports, strict=True)):
                config = replica_config(workdir, str(index), port, admin_port, idp.issuer, client, redis_port,
                                        upstream, cookie_secret, extra=f"""\
risk:
  sign_ins: {{count: 100000, window: 60s, lock: 5m}}
signals:
  transmitters:
    - {{name: bench, issuer: '{transmitter}', audience: '{AUDIENCE}', bearer_token: '{token}'}}
""")
                process = ManagedProcess.spawn(f"ztproxy-{index}", [ztproxy, "run", "-c", str(config)], workdir,
                                               stdout_path=workdir / f"ztproxy-{index}.log")
                stack.callback(process.stop)
                wait_until_ok(f"http://127.0.0.1:{admin_port}/readyz", [process], ZTPROXY_READY_TIMEOUT)
            await stream_ready(transmitter, token)
            print(f"signing in {len(targets) + 1} users...", file=sys.stderr)
            bystander = await stack.enter_async_context(await sign_in(urls[0] + "/", USER))
            users = []
            for target in targets:
                agent = await sign_in(urls[0] + "/", target)
                stack.push_async_callback(agent.close)
                users.append(Signalled(agent, target.email))

            stop, tally = asyncio.Event(), Load()
            rotations = [[f"{url}/" for url in urls[i:] + urls[:i]] for i in range(REPLICAS)]
            loaders = [asyncio.create_task(load(bystander, rotations[i % REPLICAS], tally, stop))
                       for i in range(args.load_connections)]
            print(f"{len(users)} signals at {args.rate}/s under load...", file=sys.stderr)
            await asyncio.sleep(args.warmup)
            start = time.monotonic() + 0.5
            await asyncio.gather(*(signal(user, [f"{url}/" for url in urls], f"{transmitter}/-/push", control, event,
                                          start + index / args.rate) for index, user in enumerate(users)))
            stop.set()
            await asyncio.gather(*loaders, return_exceptions=True)
            elapsed = time.monotonic() - start
            processes_say, on_target = await enforcement([f"http://127.0.0.1:{port}" for port in admin_ports])

    accepted = sum(1 for user in users if user.status == 202)
    print(f"{REPLICAS} ztproxy processes on one Redis; {args.load_connections} bystander connections; "
          f"{len(users)} {args.event} signals at {args.rate}/s, {accepted} accepted (202)")
    print(f"bystander requests: {tally.served} served ({tally.served / elapsed:.0f} req/s), {tally.refused} refused")
    for replica in range(REPLICAS):
        times = [user.refused_after[replica] for user in users if replica in user.refused_after]
        print(f"replica {replica}: time to refusal {describe(times)}")
    worst = [max(user.refused_after.values()) for user in users if len(user.refused_after) == REPLICAS]
    print(f"every replica refusing: {describe(worst)}")
    never = sum(REPLICAS - len(user.refused_after) for user in users)
    late = sum(user.served_late for user in users)
    print(f"replicas that never refused a signalled session: {never}")
    print(f"requests served after the push + {DEADLINE:.0f} s: {late}")
    print("the processes' ztproxy_signal_enforcement_seconds (from the 202):")
    print("\n".join(processes_say) or "  none recorded")
    print(f"target (every replica within {TARGET * 1000:.0f} ms of the 202 at p99, by the processes' own timing): "
          + ("met" if on_target and processes_say else "MISSED"))
    return 0 if accepted == len(users) and never == 0 and late == 0 and tally.refused == 0 else 1


async def stream_ready(transmitter: str, token: str) -> None:
    """Wait until a replica has created (or taken over) its stream at the transmitter."""
    deadline = time.monotonic() + 30
    async with aiohttp.ClientSession() as client:
        while time.monotonic() < deadline:
            async with client.get(f"{transmitter}/ssf/stream", headers={"Authorization": f"Bearer {token}"}) as got:
                if got.status == 200:
                    return
            await asyncio.sleep(0.1)
    raise TargetFailed("no replica set its stream up at the transmitter")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--signals", type=int, default=30, help="signalled users, one signal each (default 30)")
    parser.add_argument("--rate", type=float, default=5.0, help="signals a second (default 5)")
    parser.add_argument("--load-connections", type=int, default=12, help="bystander connections (default 12)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of load before the first signal")
    parser.add_argument("--event", choices=sorted(EVENTS), default="session-revoked")
    sys.exit(asyncio.run(main(parser.parse_args())))

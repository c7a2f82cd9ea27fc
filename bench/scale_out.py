"""Scale-out check: several ``ztproxy run`` processes on one session store, behind a TCP balancer.

Starts Redis (or, with ``--store cluster``, a 3-master Redis Cluster), the demo IdP, an
upstream, ``--replicas`` ztproxy processes (one worker each, the same configuration but for
their ports, ``public_url`` the balancer's) and nginx's stream module in front, round robin
per connection: a plain TCP balancer, nothing of HTTP. Then:

1. **throughput**: for 1, 2 ... ``--replicas`` processes behind the balancer, wrk with one
   signed-in session (every answer must be a 200), req/s, p99 and the CPU per request of
   the ztproxy processes;
2. **correctness**: ``bench/soak.py``'s load through the balancer (several users, a new
   connection per request, so every process serves every session), with a revocation on one
   replica (the others must refuse the session within the bound) and a reload of every
   replica (SIGHUP) every 30 s in turn: errors and wrongly allowed must be 0; RSS at start
   and end;
3. **Redis bytes per session**: ``--sessions`` more sign-ins; the store's ``used_memory``
   before and after, per session, and ``MEMORY USAGE`` of the session keys.

    .venv/bin/python bench/scale_out.py [--replicas 3] [--minutes 2] [--store redis|cluster]

Needs redis-server, Node.js with node_modules (the demo IdP), wrk, and nginx with the stream
module (Debian: ``apt-get install nginx-light libnginx-mod-stream``). Exit status 1 when
something could not run, or errors or wrongly allowed requests were seen.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import secrets
import socket
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path

import aiohttp
import redis

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # the lab lives with the tests

from loadgen import parse_report, wrk_output  # noqa: E402  (bench/ is on sys.path: this is a script there)
from processes import ManagedProcess, tree_rss_bytes  # noqa: E402
from soak import (  # noqa: E402
    CLIENT_TIMEOUT,
    EVENT_EVERY,
    EVENT_ROOM,
    SETUP_SLACK,
    WARMUP,
    LogWatcher,
    ProxySetup,
    Soak,
    SoakFailed,
    report,
    rss_line,
    sign_in,
    soak_users,
)
from targets import start_upstream  # noqa: E402

from tests.conftest import ProxyProcess, free_port  # noqa: E402
from tests.support.faults import CLIENT_ID, CLIENT_SECRET, COOKIE_NAME, Lab, Load  # noqa: E402
from tests.support.redis_cluster import start_cluster  # noqa: E402
from ztproxy.demo_idp import DemoIdp, IdpClient  # noqa: E402

BENCH_DIR = Path(__file__).resolve().parent
STATUS_SCRIPT = BENCH_DIR / "status_200.lua"
STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"
NGINX = "/usr/sbin/nginx"


@dataclasses.dataclass(frozen=True)
class ReplicaSetup(ProxySetup):
    """soak's configuration with the balancer's address as ``public_url`` (the IdP's callback)."""

    public_url: str = ""

    def yaml(self, reloads: int) -> str:
        return super().yaml(reloads).replace("  shutdown_grace: 10s\n",
                                             f"  shutdown_grace: 10s\n  public_url: {self.public_url}\n", 1)


class Replicas:
    """The replicas seen by :class:`Soak` as one proxy: a signal goes to each."""

    def __init__(self, proxies: list[ProxyProcess]) -> None:
        self.proxies = proxies
        self.process = proxies[0].process  # soak reads it for "still running"

    def signal(self, signum: int) -> None:
        for proxy in self.proxies:
            proxy.signal(signum)


class Logs:
    """Every replica's log, counted as one (soak's reload waits for one line per worker)."""

    def __init__(self, proxies: list[ProxyProcess]) -> None:
        self.watchers = [LogWatcher(proxy.log_path) for proxy in proxies]

    def count(self, event: str) -> int:
        return sum(watcher.count(event) for watcher in self.watchers)

    @property
    def counts(self) -> dict[str, int]:
        return {name: sum(w.counts[name] for w in self.watchers)
                for name in ("config_reloaded", "config_reload_failed", "worker_exited")}


class ScaleSoak(Soak):
    """soak's events through the balancer; a reload rewrites every replica's configuration first."""

    others: list[tuple[ReplicaSetup, Path]]

    async def reload(self) -> str:
        for setup, path in self.others:
            path.write_text(setup.yaml(self.reloads + 1), encoding="utf-8")
        return await super().reload()


def start_balancer(workdir: Path, ports: list[int], port: int | None = None) -> tuple[ManagedProcess, str]:
    """nginx's stream module on ``port`` (default: a free one), round robin over ``ports``: a TCP balancer."""
    port = port or free_port()
    prefix = workdir / f"balancer-{port}"
    prefix.mkdir()
    servers = "\n".join(f"        server 127.0.0.1:{p};" for p in ports)
    (prefix / "nginx.conf").write_text(f"""\
load_module {STREAM_MODULE};
daemon off;
worker_processes 1;
pid {prefix / 'nginx.pid'};
error_log {prefix / 'error.log'} warn;
events {{ worker_connections 4096; }}
stream {{
    upstream replicas {{
{servers}
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        proxy_pass replicas;
    }}
}}
""", encoding="utf-8")
    process = ManagedProcess.spawn("balancer", [NGINX, "-p", str(prefix), "-c", str(prefix / "nginx.conf")], workdir)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return process, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    process.stop()
    raise SoakFailed(f"the balancer did not listen: {process.stderr_tail()}")


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of these processes and their children (Linux /proc)."""
    total = 0
    for pid in pids:
        for member in tree_rss_bytes(pid):
            try:
                stat = Path(f"/proc/{member}/stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


async def throughput(workdir: Path, replicas: list[ProxyProcess], ports: list[int], cookie: str,
                     args: argparse.Namespace) -> list[str]:
    lines = ["| processes | req/s | p50 ms | p99 ms | CPU us/req | errors |",
             "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    headers = ["-s", str(STATUS_SCRIPT), "-H", f"Cookie: {COOKIE_NAME}={cookie}",
               "-H", f"User-Agent: {aiohttp.http.SERVER_SOFTWARE}"]  # the agent that signed in
    for count in range(1, len(replicas) + 1):
        balancer, url = start_balancer(workdir, ports[:count])
        try:
            await asyncio.to_thread(wrk_output, url + "/app/bench", threads=2, connections=args.connections,
                                    duration=2, extra_args=headers)
            pids = [proxy.process.pid for proxy in replicas[:count]]
            before = cpu_seconds(pids)
            text = await asyncio.to_thread(wrk_output, url + "/app/bench", threads=2, connections=args.connections,
                                           duration=args.duration, extra_args=headers)
            used = cpu_seconds(pids) - before
        finally:
            balancer.stop()
        result = parse_report(text)
        errors = "0" if "Non-200 responses: 0" in text else text.split("Non-200 responses:")[-1].split()[0]
        lines.append(f"| {count} | {result.requests_per_second:,.0f} | {result.p50_ms:.2f} | {result.p99_ms:.2f} "
                     f"| {used / max(1, result.requests) * 1e6:.0f} | {errors} |")
        print(f"  throughput with {count}: {lines[-1]}", file=sys.stderr, flush=True)
    return lines


def used_memory(nodes: list[tuple[str, int]]) -> int:
    total = 0
    for host, port in nodes:
        with redis.Redis(host=host, port=port) as client:
            if client.info("replication").get("role") == "master":
                total += int(client.info("memory")["used_memory"])
    return total


def keys_by_kind(nodes: list[tuple[str, int]]) -> dict[str, tuple[int, int]]:
    """Keys on the masters by kind (``s``, ``idx:u``, ``idx:h``, ``once``...): (count, MEMORY USAGE in all)."""
    found: dict[str, tuple[int, int]] = {}
    for host, port in nodes:
        with redis.Redis(host=host, port=port) as client:
            if client.info("replication").get("role") != "master":
                continue
            for key in client.scan_iter(count=1000):
                parts = key.decode(errors="replace").split(":")
                kind = ":".join(parts[:2]) if parts[0] in ("idx", "risk") and len(parts) > 2 else parts[0]
                count, size = found.get(kind, (0, 0))
                found[kind] = (count + 1, size + int(client.memory_usage(key) or 0))
    return found


async def run(args: argparse.Namespace, workdir: Path) -> int:
    async with Lab(workdir) as lab, AsyncExitStack() as stack:
        if args.store == "cluster":
            cluster = await asyncio.to_thread(start_cluster, lab.redis)
            store_url = cluster.url
            nodes = [("127.0.0.1", node.port) for node in cluster.nodes]
        else:
            server = lab.redis.start()
            store_url, nodes = server.url, [("127.0.0.1", server.port)]
        # nginx, not an aiohttp server in this process: the upstream must not be the bottleneck.
        upstream_process, upstream = start_upstream(workdir)
        stack.callback(upstream_process.stop)
        balancer_port_holder = free_port()  # the soak's balancer: its address is every replica's public_url
        public_url = f"http://127.0.0.1:{balancer_port_holder}"
        users = soak_users(args.users)
        idp = DemoIdp(workdir=workdir / "idp", port=free_port(), users=users, clients=[IdpClient(
            client_id=CLIENT_ID, client_secret=CLIENT_SECRET, redirect_uris=(f"{public_url}/.ztproxy/callback",))])
        await stack.enter_async_context(idp)
        token = secrets.token_urlsafe(32)
        token_file = workdir / "admin-token"
        token_file.write_text(token, encoding="utf-8")
        cookie_secret = secrets.token_hex(32)
        setups = [ReplicaSetup(port=free_port(), admin_port=free_port(), token_file=token_file, issuer=idp.issuer,
                               redis_url=store_url, cookie_secret=cookie_secret, upstream=upstream, users=users,
                               public_url=public_url) for _ in range(args.replicas)]
        proxies = [await lab.proxy(setup.yaml(0), port=setup.port, admin_port=setup.admin_port, workers=1)
                   for setup in setups]
        ports = [setup.port for setup in setups]
        print(f"scale-out: {args.replicas} replicas on {args.store} ({store_url}); work dir {workdir}",
              file=sys.stderr, flush=True)

        # The soak's balancer listens on the address the replicas call public.
        balancer, url = start_balancer(workdir, ports, balancer_port_holder)
        stack.callback(balancer.stop)
        # Replicas and Logs stand in for soak's one proxy and its log (duck-typed: a script).
        # redis: what soak's faults stop; scale-out injects none.
        soak = ScaleSoak(url=url, admin_url=proxies[0].admin_url, admin_token=token, proxy=Replicas(proxies),
                         redis=None, idp=idp, config_path=workdir / "ztproxy-0.yaml", setup=setups[0], users=users,
                         workers=args.replicas, log=Logs(proxies))
        soak.others = [(setup, workdir / f"ztproxy-{index}.yaml") for index, setup in enumerate(setups) if index]
        for user in users:
            await soak.sign_in(user)

        lines = await throughput(workdir, proxies, ports, soak.current[users[0].username].cookie, args)

        duration = args.minutes * 60
        soak.load = Load(url, soak.probes(), tasks=args.tasks, pause=args.pause, client_timeout=CLIENT_TIMEOUT,
                         max_seconds=WARMUP + duration + SETUP_SLACK).start()
        began = time.monotonic()
        await asyncio.sleep(WARMUP)
        rss_start = {pid: size for proxy in proxies for pid, size in tree_rss_bytes(proxy.process.pid).items()}
        print(f"  RSS after warm-up: {rss_line(rss_start)}", file=sys.stderr, flush=True)
        events = max(0, int((duration - EVENT_ROOM) // EVENT_EVERY))
        try:
            for index in range(events):
                await asyncio.sleep(max(0.0, began + WARMUP + (index + 1) * EVENT_EVERY - time.monotonic()))
                reload = index % 2 == 1 and not args.no_reloads
                done = await (soak.reload() if reload else soak.revoke(users[(index // 2) % len(users)]))
                rss_now = sum(sum(tree_rss_bytes(proxy.process.pid).values()) for proxy in proxies)
                print(f"  {time.monotonic() - began:6.1f}s {done} (RSS {rss_now / 2**20:.1f} MiB)", file=sys.stderr,
                      flush=True)
            await asyncio.sleep(max(0.0, began + WARMUP + duration - time.monotonic()))
        except SoakFailed as exc:
            soak.problems.append(str(exc))
        rss_end = {pid: size for proxy in proxies for pid, size in tree_rss_bytes(proxy.process.pid).items()}
        samples = await soak.load.finish()
        elapsed = time.monotonic() - began
        for proxy in proxies:
            if proxy.process.poll() is not None:
                soak.problems.append(f"a replica exited with {proxy.process.returncode}")

        before, kinds_before = used_memory(nodes), keys_by_kind(nodes)
        for number in range(args.sessions):
            await sign_in(url, users[number % len(users)])
        after, kinds_after = used_memory(nodes), keys_by_kind(nodes)
        added = max(1, kinds_after.get("s", (0, 0))[0] - kinds_before.get("s", (0, 0))[0])

        print(f"\nthroughput, wrk -t2 -c{args.connections} -d{args.duration:g}s through the balancer, "
              "one signed-in session:\n")
        print("\n".join(lines))
        print(f"\ncorrectness, {args.replicas} replicas behind the balancer:\n")
        status = report(soak, samples, elapsed, rss_start, rss_end, "see the keys by kind below")
        print(f"\nRedis, {args.sessions} more sign-ins ({added} new session keys): used_memory grew "
              f"{(after - before) / added:,.0f} bytes per session. Keys by kind after them (MEMORY USAGE):\n")
        print("| kind | keys | bytes | bytes per key |\n| --- | ---: | ---: | ---: |")
        for kind, (count, size) in sorted(kinds_after.items(), key=lambda item: -item[1][1]):
            print(f"| `{kind}` | {count} | {size:,} | {size / count:,.0f} |")
        print(f"RSS: {rss_line(rss_start)} -> {rss_line(rss_end)}")
        return status


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, default=3, help="ztproxy processes (3)")
    parser.add_argument("--store", choices=("redis", "cluster"), default="redis")
    parser.add_argument("--minutes", type=float, default=2.0, help="the correctness run after warm-up (2)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of each throughput run (10)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (32)")
    parser.add_argument("--users", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--pause", type=float, default=0.01)
    parser.add_argument("--sessions", type=int, default=20, help="sign-ins for the Redis bytes per session (20)")
    parser.add_argument("--no-reloads", action="store_true", help="revocations only (to tell memory growth apart)")
    return parser.parse_args(argv)


async def bounded(args: argparse.Namespace, workdir: Path) -> int:
    try:
        return await asyncio.wait_for(run(args, workdir), args.minutes * 60 + WARMUP + SETUP_SLACK)
    except (SoakFailed, RuntimeError, TimeoutError) as exc:
        print(f"scale-out: could not run: {type(exc).__name__}: {exc}")
        return 1


if __name__ == "__main__":
    arguments = parse_args()
    with tempfile.TemporaryDirectory(prefix="ztproxy-scale-") as temporary:
        sys.exit(asyncio.run(bounded(arguments, Path(temporary))))

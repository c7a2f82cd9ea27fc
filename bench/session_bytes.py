"""Redis bytes per session: real sign-ins through the demo IdP, then ``MEMORY USAGE`` of every key.

Starts one Redis (or, with ``--store cluster``, a 3-master Redis Cluster), the demo IdP
with back-channel logout on (so ID tokens carry ``sid`` and each session is in its IdP
session's index, as a deployment that follows docs/sign-in.md has it), an upstream and one
``ztproxy run``; signs ``--users`` users in ``--sessions`` times in all (each sign-in a new
browser, so a new IdP session), then prints the keys by kind with their ``MEMORY USAGE``,
the total over the sessions, and what one user's only session added (the worst case:
nothing shared with other sessions of the user): every key it created, and what the keys it
shares with other users' sessions (its handle bucket, when another session is in it) grew.

    .venv/bin/python bench/session_bytes.py [--store redis|cluster] [--users 3] [--sessions 21]

Needs redis-server and Node.js with the project's node_modules (the demo IdP).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

import redis

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # the lab lives with the tests

from scale_out import keys_by_kind  # noqa: E402  (bench/ is on sys.path: this is a script there)
from soak import sign_in, soak_users  # noqa: E402

from tests.conftest import free_port  # noqa: E402
from tests.support.faults import CLIENT_ID, CLIENT_SECRET, Lab, proxy_config  # noqa: E402
from tests.support.redis_cluster import start_cluster  # noqa: E402
from ztproxy.demo_idp import DemoIdp, IdpClient  # noqa: E402

ROUTES = "  - {name: app, path: /app, upstream: '%s', allow: [{email_domains: [corp.example]}]}"


def usage(nodes: list[tuple[str, int]]) -> dict[str, int]:
    """``MEMORY USAGE`` of every key on the masters."""
    found: dict[str, int] = {}
    for host, port in nodes:
        with redis.Redis(host=host, port=port) as client:
            if client.info("replication").get("role") == "master":
                found.update((key.decode(), int(client.memory_usage(key) or 0)) for key in client.scan_iter(count=1000))
    return found


def table(kinds: dict[str, tuple[int, int]]) -> list[str]:
    lines = ["| kind | keys | bytes | bytes per key |", "| --- | ---: | ---: | ---: |"]
    for kind, (count, size) in sorted(kinds.items(), key=lambda item: -item[1][1]):
        lines.append(f"| `{kind}` | {count} | {size:,} | {size / count:,.0f} |")
    return lines


async def run(args: argparse.Namespace, workdir: Path) -> None:
    async with Lab(workdir) as lab:
        if args.store == "cluster":
            cluster = await asyncio.to_thread(start_cluster, lab.redis)
            store_url, nodes = cluster.url, [("127.0.0.1", node.port) for node in cluster.nodes]
        else:
            server = lab.redis.start()
            store_url, nodes = server.url, [("127.0.0.1", server.port)]
        port, admin_port = free_port(), free_port()
        url = f"http://127.0.0.1:{port}"
        users = soak_users(args.users + 1)
        idp = DemoIdp(workdir=workdir / "idp", port=free_port(), users=users, clients=[IdpClient(
            client_id=CLIENT_ID, client_secret=CLIENT_SECRET, redirect_uris=(f"{url}/.ztproxy/callback",),
            backchannel_logout_uri=f"{url}/.ztproxy/backchannel-logout")])
        await lab._stack.enter_async_context(idp)
        upstream = await lab.upstream()
        config = proxy_config(port=port, admin_port=admin_port, routes=ROUTES % upstream, idp=idp,
                              sessions=f"  store: {store_url}")
        await lab.proxy(config, port=port, admin_port=admin_port)
        for number in range(args.sessions):
            await sign_in(url, users[number % args.users])
        shared = keys_by_kind(nodes)
        before = usage(nodes)
        await sign_in(url, users[args.users])  # one more user, with one session only
        grown = {key: size - before.get(key, 0) for key, size in usage(nodes).items() if size != before.get(key)}
        sessions = shared.get("s", (0, 0))[0]
        total = sum(size for kind, (_, size) in shared.items() if kind != "once")
        print(f"{args.store}: {args.sessions} sign-ins of {args.users} users, {sessions} session keys; "
              "MEMORY USAGE by kind:\n")
        print("\n".join(table(shared)))
        print(f"\nAll but the expiring sign-in markers (`once`): {total:,} bytes, "
              f"{total / max(1, sessions):,.0f} bytes per session.\n")
        print("A user's only session (what one more sign-in added: a key it created, or the growth of one "
              "that was there):\n")
        print("| key | created | bytes |\n| --- | --- | ---: |")
        for key, size in sorted(grown.items(), key=lambda item: -item[1]):
            print(f"| `{key}` | {'no, grew' if key in before else 'yes'} | {size:,} |")
        print(f"\nIn all: {sum(size for key, size in grown.items() if not key.startswith('once:')):,} bytes "
              "(without `once`).")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", choices=("redis", "cluster"), default="redis")
    parser.add_argument("--users", type=int, default=3)
    parser.add_argument("--sessions", type=int, default=21)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ztproxy-bytes-") as temporary:
        asyncio.run(run(args, Path(temporary)))


if __name__ == "__main__":
    main()

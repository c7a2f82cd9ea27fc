"""Forward-auth benchmark: ztproxy's decision endpoint behind nginx, against ztproxy as the full proxy.

One invocation starts Redis, the nginx upstream of ``run.py``, the demo IdP, ztproxy (Redis
sessions, ``server.auth_listen``, nginx as its trusted proxy) and nginx in front running what
``ztproxy forward-auth nginx`` prints, plus a plain proxy location of the same nginx. It signs
in once through nginx and loads, with that session cookie, in interleaved rounds:

- ``decisions``: ztproxy's ``/.ztproxy/auth`` on the decision listener, asked as nginx asks
  (``X-Original-URL``); every answer must be a 200 carrying the identity;
- ``ztproxy-full``: ztproxy as the full proxy, signed in;
- ``nginx+ztproxy``: nginx in front, asking ztproxy about each request (``auth_request``);
- ``nginx-alone``: the same nginx proxying to the same upstream without asking.

Target (issue 18): decisions at >= 1.5x ztproxy-full's signed-in req/s, with no session-store
round trip per request. Exit 0 when every run was clean, even if a target FAILs.

    .venv/bin/python bench/run_forward_auth.py [--duration 10] [--connections 64] [--threads 2]
                                               [--workers 2] [--rounds 3] [--json results.json]
"""

from __future__ import annotations

import secrets
import statistics
import sys
from contextlib import AsyncExitStack

try:
    from auth_world import USER, ZTPROXY_COOKIE, LoadTarget, sign_in, start_ztproxy_auth, write_ztproxy_config
    from rounds import Rounds, World, run_main
except ModuleNotFoundError as missing:  # run by a python without the project installed
    sys.exit(f"run_forward_auth.py needs the project's venv ({missing.name} is not installed here): "
             ".venv/bin/python bench/run_forward_auth.py")
from processes import ManagedProcess, TargetFailed, free_port
from run import median_outcome
from run_auth import AuthOutcome, clean_result, print_table
from targets import BenchEnv, start_nginx

from ztproxy.calling_proxies import generate
from ztproxy.config.loader import load_text
from ztproxy.demo_idp import DemoIdp, IdpClient, IdpStartError

MIN_DECISIONS_MULTIPLE_OF_FULL = 1.5
PLAIN_PATH = "/plain"  # nginx-alone's location: the same nginx, no auth_request


def front_nginx(config_text: str, front_port: int, upstream_url: str) -> str:
    """The generated server block on loopback, and the plain location nginx-alone measures."""
    generated = generate("nginx", load_text(config_text, "bench"), "bench")
    plain = f"""\
    location {PLAIN_PATH}/ {{
        proxy_pass {upstream_url}/;
        proxy_set_header Host $http_host;
    }}
"""
    marker = "    location /.ztproxy/ {"
    return generated.replace(f"listen {front_port};", f"listen 127.0.0.1:{front_port} backlog=4096;") \
        .replace(marker, plain + marker, 1)


async def start_world(stack: AsyncExitStack, env: BenchEnv, redis_port: int) -> World:
    port, admin_port, decisions_port, front_port, idp_port = (free_port() for _ in range(5))
    front = f"http://127.0.0.1:{front_port}"
    client = IdpClient(client_id="ztproxy", client_secret=secrets.token_urlsafe(24),
                       redirect_uris=(f"{front}/.ztproxy/callback",))
    idp = DemoIdp(workdir=env.workdir / "idp", port=idp_port, clients=[client], users=[USER])
    try:
        await stack.enter_async_context(idp)
    except IdpStartError as exc:
        raise TargetFailed(f"the demo IdP did not start: {exc}") from exc
    server = (f"  auth_listen: 127.0.0.1:{decisions_port}\n  public_url: {front}\n"
              "  trusted_proxies: [127.0.0.1/32]\n")
    config = write_ztproxy_config(env.workdir, port=port, admin_port=admin_port, issuer=idp.issuer, client=client,
                                  redis_port=redis_port, upstream_url=env.upstream_url, server=server)
    config_text = config.read_text(encoding="utf-8")
    ztproxy = start_ztproxy_auth(env, config, admin_port, env.workdir / "ztproxy-access.log")
    stack.callback(ztproxy.stop)
    nginx: ManagedProcess = start_nginx("front", env.workdir, front_port, 2,
                                         front_nginx(config_text, front_port, env.upstream_url),
                                         ready_path=PLAIN_PATH + "/")
    stack.callback(nginx.stop)
    cookie = await sign_in(front + "/", ZTPROXY_COOKIE)  # through nginx, as people do
    asked = (("X-Original-URL", f"{front}/"), ("X-Original-Method", "GET"), ("Accept", "text/html"))
    targets = [
        LoadTarget("decisions", f"http://127.0.0.1:{decisions_port}/.ztproxy/auth", cookie, ztproxy,
                   headers=asked, expect_body=None, expect_header="X-Ztproxy-Email"),
        LoadTarget("ztproxy-full", f"http://127.0.0.1:{port}/", cookie, ztproxy,
                   metrics_url=f"http://127.0.0.1:{admin_port}/metrics"),
        LoadTarget("nginx+ztproxy", front + "/", cookie, nginx),
        LoadTarget("nginx-alone", f"{front}{PLAIN_PATH}/", None, nginx),
    ]
    return World({target.name: target for target in targets})


def checks(rounds: dict[str, list[AuthOutcome]]) -> list[str]:
    lines = []
    ratios = [run.requests_per_second / full.requests_per_second
              for run, full in zip(map(clean_result, rounds["decisions"]), map(clean_result, rounds["ztproxy-full"]),
                                   strict=True)
              if run is not None and full is not None]
    goal = f"decisions req/s >= {MIN_DECISIONS_MULTIPLE_OF_FULL:g}x ztproxy-full"
    if ratios:
        value = statistics.median(ratios)
        verdict = "PASS" if value >= MIN_DECISIONS_MULTIPLE_OF_FULL else "FAIL"
        lines.append(f"{goal}: {verdict} ({value:.2f}x, median of {len(ratios)} paired rounds)")
    else:
        lines.append(f"{goal}: SKIP (no round measured both cleanly)")
    decisions = [run for run in rounds["decisions"] if run.result is not None and run.result.requests]
    if decisions:
        per_request = max(sum(run.redis_commands.values()) / run.result.requests for run in decisions
                          if run.result is not None)
        verdict = "PASS" if per_request < 0.01 else "FAIL"
        lines.append(f"decisions without a session-store round trip per request: {verdict} "
                     f"({per_request:.4f} Redis commands per request at most)")
    return lines


def report(rounds: Rounds, world: World) -> None:
    outcomes = {name: median_outcome(runs) for name, runs in rounds.items()}
    print_table(outcomes, {"ztp-full": outcomes["ztproxy-full"], "nginx": outcomes["nginx-alone"]}, redis_cpu=False)
    print()
    for name, runs in rounds.items():
        for run in runs:
            if run.error:
                print(f"{name}: {run.error}")
    print("cpu us/req is the CPU of the target's process tree: ztproxy's for decisions and ztproxy-full, "
          "nginx's alone for the two nginx rows (ztproxy answers nginx+ztproxy's decisions besides).")
    print()
    for line in checks(rounds):
        print(line)


def main(argv: list[str] | None = None) -> int:
    return run_main(argv, "ztproxy-bench-forward-auth-", start_world,
                    "the IdP, ztproxy and nginx in front, signing in through nginx", report)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)

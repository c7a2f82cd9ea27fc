"""Services benchmark: a service calling with a JWT access token, against the signed-in browser path.

One invocation starts Redis, the nginx upstream of ``run.py``, the demo IdP (behind a relay
that counts what ztproxy asks it) and ztproxy (Redis sessions, a route for people and one for
a service), signs a person in once and gets the service a client-credentials token once,
then loads, in interleaved rounds:

- ``ztproxy-auth``: the signed-in browser path (the session cookie);
- ``ztproxy-service``: the service path (``Authorization: Bearer`` with a JWT access token).

Target (issue 15): the service path at >= 90% of the browser path's req/s in the same run,
with no call to the issuer per request (no JWKS fetch, no introspection: the relay counts
them). Exit 0 when every run was clean, even if a target FAILs.

    .venv/bin/python bench/run_services.py [--duration 10] [--connections 64] [--threads 2]
                                           [--workers 2] [--rounds 3]
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
    sys.exit(f"run_services.py needs the project's venv ({missing.name} is not installed here): "
             ".venv/bin/python bench/run_services.py")
from processes import TargetFailed, free_port
from run import median_outcome
from run_auth import AuthOutcome, clean_result, print_table
from targets import BenchEnv

from tests.support.relay import SegmentingRelay
from ztproxy.demo_idp import DemoIdp, IdpClient, IdpResource, IdpService, IdpStartError

MIN_SERVICE_SHARE_OF_AUTH = 0.90
SERVICE = IdpService("bench-service", secrets.token_urlsafe(24), ("api.read",))
API_PATH = "/api"


async def start_world(stack: AsyncExitStack, env: BenchEnv, redis_port: int) -> World:
    port, admin_port, idp_port = free_port(), free_port(), free_port()
    url = f"http://127.0.0.1:{port}"
    relay = await SegmentingRelay(idp_port, segment=1 << 20, pause=0.0).start()
    stack.push_async_callback(relay.close)
    client = IdpClient(client_id="ztproxy", client_secret=secrets.token_urlsafe(24),
                       redirect_uris=(f"{url}/.ztproxy/callback",))
    idp = DemoIdp(workdir=env.workdir / "idp", port=idp_port, public_port=relay.port, clients=[client],
                  users=[USER], services=[SERVICE], resources=[IdpResource(url, SERVICE.scopes, token_ttl=3600)])
    try:
        await stack.enter_async_context(idp)
    except IdpStartError as exc:
        raise TargetFailed(f"the demo IdP did not start: {exc}") from exc
    api_route = f"""\
  - name: api
    path: {API_PATH}
    upstream: {env.upstream_url}
    allow: [{{clients: [{SERVICE.client_id}], scopes: [api.read]}}]
"""
    config = write_ztproxy_config(env.workdir, port=port, admin_port=admin_port, issuer=idp.issuer, client=client,
                                  redis_port=redis_port, upstream_url=env.upstream_url, extra_routes=api_route)
    ztproxy = start_ztproxy_auth(env, config, admin_port, env.workdir / "ztproxy-access.log")
    stack.callback(ztproxy.stop)
    cookie = await sign_in(url + "/", ZTPROXY_COOKIE)
    token = await idp.client_credentials(SERVICE, url, SERVICE.scopes)
    targets = [
        LoadTarget("ztproxy-auth", url + "/", cookie, ztproxy),
        LoadTarget("ztproxy-service", f"{url}{API_PATH}/", None, ztproxy,
                   headers=(("Authorization", f"Bearer {token}"),)),
    ]
    # Each worker verifies the token once (discovery and keys, then the token remembered): a
    # warm-up first, so that the rounds count what a request costs, not a worker's first.
    return World({target.name: target for target in targets}, warm=("ztproxy-service",),
                 count=lambda: _issuer_requests(relay))


def checks(rounds: dict[str, list[AuthOutcome]], issuer_calls: int) -> list[str]:
    ratios = [service.requests_per_second / auth.requests_per_second
              for service, auth in zip(map(clean_result, rounds["ztproxy-service"]),
                                       map(clean_result, rounds["ztproxy-auth"]), strict=True)
              if service is not None and auth is not None]
    goal = f"ztproxy-service req/s >= {MIN_SERVICE_SHARE_OF_AUTH:.0%} of ztproxy-auth"
    if ratios:
        value = statistics.median(ratios)
        verdict = "PASS" if value >= MIN_SERVICE_SHARE_OF_AUTH else "FAIL"
        lines = [f"{goal}: {verdict} ({value:.1%}, median of {len(ratios)} paired rounds)"]
    else:
        lines = [f"{goal}: SKIP (no round measured both cleanly)"]
    lines.append(f"no issuer call per service request: {'PASS' if issuer_calls == 0 else 'FAIL'} "
                 f"({issuer_calls} requests reached the IdP during the service runs)")
    return lines


def _issuer_requests(relay: SegmentingRelay) -> int:
    return sum(relay.sent_upstream.count(method) for method in (b"GET /", b"POST /"))


def report(rounds: Rounds, world: World) -> None:
    outcomes = {name: median_outcome(runs) for name, runs in rounds.items()}
    print_table(outcomes, {"ztp-auth": outcomes["ztproxy-auth"]}, redis_cpu=False)
    print()
    for line in checks(rounds, world.counted.get("ztproxy-service", 0)):
        print(line)


def main(argv: list[str] | None = None) -> int:
    return run_main(argv, "ztproxy-bench-services-", start_world,
                    "the IdP and ztproxy, signing a person in and getting the service a token", report)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)

"""The signed-in world of ``run_auth.py``: Redis, the upstream, a real IdP, ztproxy and Apache.

Everything runs on 127.0.0.1 on free ports and is stopped by PID through the caller's
``AsyncExitStack``. Both proxies keep their sessions in the same ``redis-server``, both
sign users in at the same demo OpenID Provider (npm oidc-provider, one client each), and
both forward to the same nginx upstream as ``run.py``'s. ``sign_in`` logs in once per
proxy with the browserless ``UserAgent`` of the tests and hands back the session cookie
the load generator sends; ``probe`` checks, without following redirects, that a request
with that cookie still gets the upstream's 200 and body (not a sign-in redirect).
"""

from __future__ import annotations

import http.client
import secrets
import sys
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import redis
from apache import CLAIM_PREFIX, PUBLIC_PATH, SESSION_COOKIE, ApacheOidc, start_apache
from processes import ManagedProcess, TargetFailed, free_port, wait_until_ok
from targets import UPSTREAM_BODY, ZTPROXY_READY_TIMEOUT, BenchEnv, ztproxy_listener_yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # tests.support.user_agent: the tests' browserless login driver

from tests.support.user_agent import UserAgent  # noqa: E402
from ztproxy.demo_idp import DemoIdp, IdpClient, IdpStartError, IdpUser  # noqa: E402

REDIS_SERVER = "/usr/bin/redis-server"
REDIS_READY_TIMEOUT = 10.0
PROBE_TIMEOUT = 5.0
EMAIL_DOMAIN = "corp.example"
USER = IdpUser(username="alice", password=secrets.token_urlsafe(16), email=f"alice@{EMAIL_DOMAIN}",
               name="Alice Example", groups=("employees",))
# Signs in fine but is outside the email domain: both proxies must refuse her (same policy).
OUTSIDER = IdpUser(username="mallory", password=secrets.token_urlsafe(16), email="mallory@evil" + EMAIL_DOMAIN,
                   name="Mallory Example", groups=("employees",))
ZTPROXY_COOKIE = "ztproxy_session"
# Sent at sign-in and with every request that carries the session: ztproxy's session risk ends
# a session used from another browser (user-agent-changed), as a copied cookie would be.
BENCH_USER_AGENT = "ztproxy-bench/1"
# The upstream answers this path with the identity headers it received, for the report.
IDENTITY_PATH = "/bench-identity"
IDENTITY_HEADERS = ("X-Ztproxy-User", "X-Ztproxy-Email", "X-Ztproxy-Groups", "X-Ztproxy-Jwt-Assertion",
                    f"{CLAIM_PREFIX}sub", f"{CLAIM_PREFIX}email", f"{CLAIM_PREFIX}groups")


class ProbeFailed(Exception):
    """A signed-in request did not reach the upstream (a redirect, a refusal, another body)."""


@dataclass(frozen=True)
class LoadTarget:
    """One URL to load, the cookie to send with it, and the process behind it."""

    name: str
    url: str
    cookie: str | None
    process: ManagedProcess
    # The identity headers the upstream saw on a signed-in request (None: not asked).
    identity: dict[str, str] | None = None
    metrics_url: str | None = None  # ztproxy's /metrics, for its assertion signs
    headers: tuple[tuple[str, str], ...] = ()  # sent with every request besides the cookie
    # The body every answer must have (the upstream's); None: any body, and the 200 must
    # carry this header instead (a forward-auth decision: its identity, no body).
    expect_body: bytes | None = UPSTREAM_BODY
    expect_header: str | None = None


@dataclass(frozen=True)
class AuthWorld:
    targets: dict[str, LoadTarget]
    ztproxy_access_log: Path


def start_redis(workdir: Path) -> tuple[ManagedProcess, int]:
    if not Path(REDIS_SERVER).is_file():
        raise TargetFailed(f"{REDIS_SERVER} not found: apt-get install -y redis-server")
    port = free_port()
    argv = [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(workdir)]
    process = ManagedProcess.spawn("redis", argv, workdir)
    try:
        _wait_for_redis(process, port)
    except BaseException:  # also Ctrl-C: never leave it running
        process.stop()
        raise
    return process, port


def _wait_for_redis(process: ManagedProcess, port: int) -> None:
    deadline = time.monotonic() + REDIS_READY_TIMEOUT
    with redis.Redis(port=port, socket_timeout=1.0) as client:
        while True:
            try:
                if client.ping():
                    return
            except redis.RedisError:
                pass
            if not process.alive() or time.monotonic() > deadline:
                raise TargetFailed(f"redis-server did not answer PING on port {port}: {process.stderr_tail()}")
            time.sleep(0.05)


def identity_location() -> str:
    lines = "".join(f"{name}: ${_nginx_variable(name)}\\n" for name in IDENTITY_HEADERS)
    return f"""\
        location = {IDENTITY_PATH} {{
            default_type text/plain;
            return 200 "{lines}";
        }}"""


def _nginx_variable(header: str) -> str:
    return "http_" + header.lower().replace("-", "_")


def write_ztproxy_config(workdir: Path, *, port: int, admin_port: int, issuer: str, client: IdpClient,
                         redis_port: int, upstream_url: str, server: str = "", extra_routes: str = "") -> Path:
    """``server``: more lines of the server section (indented), e.g. forward-auth's; ``extra_routes``:
    more entries of ``routes`` (before the catch-all one)."""
    config = workdir / "ztproxy-auth.yaml"
    config.write_text(ztproxy_listener_yaml(port, admin_port, server) + f"""\
identity_providers:
  - name: demo
    issuer: {issuer}
    client_id: {client.client_id}
    client_secret: {client.client_secret}
    scopes: [openid, email, profile, groups]
sessions:
  store: redis://127.0.0.1:{redis_port}/0
  cookie_secrets: [{secrets.token_hex(32)}]
  cookie_name: {ZTPROXY_COOKIE}
assertion:
  keys_dir: {workdir / 'ztproxy-keys'}
routes:
{extra_routes}  - name: public
    path: {PUBLIC_PATH}
    upstream: {upstream_url}
    allow: [{{public: true}}]
  - name: app
    path: /
    upstream: {upstream_url}
    allow: [{{email_domains: [{EMAIL_DOMAIN}]}}]
""", encoding="utf-8")
    return config


def start_ztproxy_auth(env: BenchEnv, config: Path, admin_port: int, access_log: Path) -> ManagedProcess:
    if env.ztproxy is None:
        raise TargetFailed("ztproxy executable not found (.venv/bin/ztproxy or PATH)")
    argv = [env.ztproxy, "run", "-c", str(config), "--workers", str(env.workers)]
    process = ManagedProcess.spawn("ztproxy", argv, env.workdir, stdout_path=access_log)
    try:
        wait_until_ok(f"http://127.0.0.1:{admin_port}/readyz", [process], ZTPROXY_READY_TIMEOUT)
    except BaseException:  # also Ctrl-C: never leave it running
        process.stop()
        raise
    return process


async def start_world(stack: AsyncExitStack, env: BenchEnv, redis_port: int) -> AuthWorld:
    """The IdP, ztproxy and Apache (stopped by ``stack``), signed in once each."""
    ztproxy_port, admin_port, apache_port, idp_port = free_port(), free_port(), free_port(), free_port()
    ztproxy_url = f"http://127.0.0.1:{ztproxy_port}"
    ztproxy_client = IdpClient(client_id="ztproxy", client_secret=secrets.token_urlsafe(24),
                               redirect_uris=(f"{ztproxy_url}/.ztproxy/callback",))
    apache = ApacheOidc(port=apache_port, issuer=f"http://127.0.0.1:{idp_port}", client_id="apache",
                        client_secret=secrets.token_urlsafe(24), redis_port=redis_port,
                        upstream_url=env.upstream_url, email_domain=EMAIL_DOMAIN)
    apache_client = IdpClient(client_id=apache.client_id, client_secret=apache.client_secret,
                              redirect_uris=(apache.redirect_uri,))
    idp = DemoIdp(workdir=env.workdir / "idp", port=idp_port, clients=[ztproxy_client, apache_client],
                  users=[USER, OUTSIDER])
    try:
        await stack.enter_async_context(idp)
    except IdpStartError as exc:
        raise TargetFailed(f"the demo IdP did not start: {exc}") from exc

    config = write_ztproxy_config(env.workdir, port=ztproxy_port, admin_port=admin_port, issuer=idp.issuer,
                                  client=ztproxy_client, redis_port=redis_port, upstream_url=env.upstream_url)
    access_log = env.workdir / "ztproxy-access.log"
    ztproxy = start_ztproxy_auth(env, config, admin_port, access_log)
    stack.callback(ztproxy.stop)
    apache_process = start_apache(apache, env.workdir)
    stack.callback(apache_process.stop)

    ztproxy_cookie = await sign_in(ztproxy_url + "/", ZTPROXY_COOKIE)
    apache_cookie = await sign_in(apache.url + "/", SESSION_COOKIE)
    await check_refused(ztproxy_url + "/")
    await check_refused(apache.url + "/")
    targets = [
        LoadTarget("ztproxy-public", f"{ztproxy_url}{PUBLIC_PATH}/", ztproxy_cookie, ztproxy),
        LoadTarget("ztproxy-auth", ztproxy_url + "/", ztproxy_cookie, ztproxy,
                   identity_seen(ztproxy_url, ztproxy_cookie), f"http://127.0.0.1:{admin_port}/metrics"),
        LoadTarget("apache-public", f"{apache.url}{PUBLIC_PATH}/", apache_cookie, apache_process),
        LoadTarget("apache-oidc", apache.url + "/", apache_cookie, apache_process,
                   identity_seen(apache.url, apache_cookie)),
    ]
    return AuthWorld(targets={t.name: t for t in targets}, ztproxy_access_log=access_log)


async def sign_in(start_url: str, cookie_name: str) -> str:
    """Sign in through the IdP's pages as ``USER``; the ``Cookie`` header value that carries the session."""
    async with UserAgent() as agent:
        agent.session.headers["User-Agent"] = BENCH_USER_AGENT
        try:
            page = await agent.login(start_url, USER.username, USER.password)
        except (aiohttp.ClientError, TimeoutError, RuntimeError) as exc:  # RuntimeError: a redirect loop
            raise TargetFailed(f"signing in at {start_url} failed: {exc!r}") from exc
        cookie = agent.cookie_jar.filter_cookies(page.url).get(cookie_name)
    if page.status != 200 or page.text.encode() != UPSTREAM_BODY:
        raise TargetFailed(f"signing in at {start_url} ended at {page.method} {page.url} with status "
                           f"{page.status}: {page.text[:200]!r}")
    if cookie is None or not cookie.value:
        raise TargetFailed(f"signing in at {start_url} set no {cookie_name} cookie")
    return f"{cookie_name}={cookie.coded_value}"


async def check_refused(start_url: str) -> None:
    """A signed-in user outside the email domain must be refused: both proxies enforce the policy."""
    async with UserAgent() as agent:
        try:
            page = await agent.login(start_url, OUTSIDER.username, OUTSIDER.password)
        except (aiohttp.ClientError, TimeoutError, RuntimeError) as exc:
            raise TargetFailed(f"signing in at {start_url} as {OUTSIDER.username} failed: {exc!r}") from exc
    if page.status not in (401, 403) or page.text.encode() == UPSTREAM_BODY:
        raise TargetFailed(f"{OUTSIDER.email} signed in at {start_url} and got {page.status} at {page.url}, "
                           "not a refusal: the policy is not enforced")


def _get(url: str, cookie: str | None, headers: tuple[tuple[str, str], ...] = ()) -> tuple[int, dict[str, str], bytes]:
    """One GET that follows no redirect: a sign-in redirect must show as what it is."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=PROBE_TIMEOUT)
    try:
        sent = {**dict(headers), **({"Cookie": cookie, "User-Agent": BENCH_USER_AGENT} if cookie else {})}
        connection.request("GET", parts.path or "/", headers=sent)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def probe(target: LoadTarget) -> None:
    """Raise :class:`ProbeFailed` unless the target's URL, with its cookie, serves the upstream's 200."""
    try:
        status, headers, body = _get(target.url, target.cookie, target.headers)
    except OSError as exc:
        raise ProbeFailed(f"GET {target.url} failed: {exc}") from exc
    if target.expect_header is not None and status == 200 and not headers.get(target.expect_header):
        raise ProbeFailed(f"GET {target.url} answered 200 without {target.expect_header}")
    if status != 200 or (target.expect_body is not None and body != target.expect_body):
        where = f" to {headers['Location']}" if "Location" in headers else ""
        raise ProbeFailed(f"GET {target.url} with the session cookie answered {status}{where}, "
                          f"not the upstream's 200: {body[:120]!r}")


def identity_seen(origin: str, cookie: str) -> dict[str, str]:
    """The identity headers (and their values) the upstream received on a signed-in request."""
    try:
        status, _, body = _get(origin + IDENTITY_PATH, cookie)
    except OSError as exc:
        raise TargetFailed(f"GET {origin}{IDENTITY_PATH} failed: {exc}") from exc
    if status != 200:
        raise TargetFailed(f"GET {origin}{IDENTITY_PATH} answered {status}")
    seen = {}
    for line in body.decode("utf-8", "replace").splitlines():
        name, _, value = line.partition(": ")
        if value:
            seen[name] = value
    return seen

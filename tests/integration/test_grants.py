"""Just-in-time access end to end: two ``ztproxy run`` replicas (one with two workers) on one real Redis.

Bob and Carol sign in at the real IdP (the demo's oidc-provider; Carol with TOTP). Bob is
refused payroll and offered "Request access"; he asks at ``/.ztproxy/access/`` on replica A,
Carol approves on replica B, and Bob gets in on every worker of both replicas at once: their
cache_ttl is a minute, so only the announcement can open it that fast. Carol ends the grant
and Bob is refused everywhere again, his open WebSocket closed (1008). Every bad form is
refused with its status and changes nothing. The admin API and ``ztproxy grants`` decide as
an admin; a grant of a few seconds ends by itself on both replicas.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import pytest
from aiohttp import WSMsgType, web

from tests.conftest import REPO, ProxyProcess, Upstream, UpstreamFactory, free_port, wait_ready
from tests.integration.login_env import CLIENT_ID, CLIENT_SECRET
from tests.integration.test_revocation import ws_echo
from tests.support.idp import (
    ALICE,
    BOB,
    BOB_PASSWORD,
    BOB_TOTP_SECRET,
    CAROL,
    CAROL_PASSWORD,
    CAROL_TOTP_SECRET,
    IdpFactory,
)
from tests.support.redis import RedisFactory, RedisServer
from tests.support.user_agent import Response, UserAgent
from ztproxy.demo_idp import DemoIdp, IdpClient, IdpUser
from ztproxy.grants.registry import CHANNEL

pytestmark = pytest.mark.integration

BOUND = 10.0  # seconds from an approval or revocation to every worker of every replica acting on it
ADMIN_TOKEN = "grants-test-admin-token-0123456789abcdef0123"
COOKIE_SECRET = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
JSON = {"Accept": "application/json"}
DAVE = IdpUser(username="dave", password="dave-demo-password", email="dave@corp.example", name="Dave Example",
               groups=("employees", "payroll-leads"))
StartProcess = Callable[..., ProxyProcess]


class Reachable(Protocol):
    """A proxy the access pages are asked on: a replica here, or any test's proxy."""

    @property
    def url(self) -> str: ...


@dataclass
class Replica:
    name: str
    process: ProxyProcess
    workers: int

    @property
    def url(self) -> str:
        return self.process.url


@dataclass
class World:
    redis: RedisServer
    idp: DemoIdp
    upstream: Upstream
    replicas: list[Replica]
    token_file: Path
    config_path: Path
    texts: list[str]  # each replica's configuration

    @property
    def wrong_token(self) -> Path:
        path = self.token_file.with_name("wrong-token")
        path.write_text("wrong-admin-token-0123456789abcdef0123456789\n")
        return path

    @property
    def a(self) -> Replica:
        return self.replicas[0]

    @property
    def b(self) -> Replica:
        return self.replicas[1]

    async def admin(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        async with aiohttp.ClientSession() as client:
            async with client.request(method, self.a.process.admin_url + path, json=body,
                                      headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as response:
                return response.status, await response.json()


async def status(agent: UserAgent, replica: Replica, path: str = "/payroll/report") -> int:
    async with agent.session.get(replica.url + path, allow_redirects=False, headers=JSON) as response:
        await response.read()
        return response.status


async def everywhere(agent: UserAgent, world: World, expected: int, since: float, what: str) -> None:
    """Until every worker of every replica answers ``expected`` (runs of it in a row), within BOUND."""
    for replica in world.replicas:
        in_a_row, needed = 0, 12 if replica.workers > 1 else 2
        while in_a_row < needed:
            got = await status(agent, replica)
            if got != expected:
                assert time.monotonic() - since < BOUND, f"{replica.name}: {what}: still {got}"
                in_a_row = 0
                await asyncio.sleep(0.02)
                continue
            in_a_row += 1


async def logged(replica: Replica, *parts: str) -> None:
    """Until a line of the replica's log holds every part (log lines leave in batches)."""
    deadline = time.monotonic() + 10
    while not any(all(part in line for part in parts) for line in replica.process.log_lines()):
        assert time.monotonic() < deadline, f"{replica.name} logged no line with {parts}"
        await asyncio.sleep(0.05)


async def page(agent: UserAgent, replica: Reachable, query: str = "") -> dict[str, Any]:
    async with agent.session.get(replica.url + "/.ztproxy/access/" + query, headers=JSON) as response:
        assert response.status == 200, await response.text()
        data = await response.json()
        assert isinstance(data, dict)
        return data


async def post(agent: UserAgent, replica: Reachable, path: str, fields: dict[str, str], *,
               origin: str | None = "own", accept: str = "text/html") -> tuple[int, str]:
    headers = {"Accept": accept}
    if origin is not None:
        headers["Origin"] = replica.url if origin == "own" else origin
    async with agent.session.post(replica.url + path, data=fields, headers=headers,
                                  allow_redirects=False) as response:
        return response.status, await response.text()


def replica_yaml(port: int, idp: str, mfa_acr: str, upstream: Upstream, redis: RedisServer, token_file: Path,
                 webhook: str = "") -> str:
    return f"""
server:
  listen: 127.0.0.1:{port}
  admin_listen: 127.0.0.1:{free_port()}
  admin_token_file: {token_file}
  shutdown_grace: 2s
identity_providers:
  - {{name: demo, issuer: '{idp}', client_id: {CLIENT_ID}, client_secret: {CLIENT_SECRET},
     scopes: [openid, email, profile, groups], mfa: {{acr_values: ['{mfa_acr}']}}}}
sessions:
  store: '{redis.url}'
  cache_ttl: 60s
  cookie_secrets: [{COOKIE_SECRET}]
risk:
  sign_ins: {{count: 100000, window: 60s, lock: 5m}}
grants:
  max_pending_per_user: 3
{webhook}
routes:
  - name: payroll
    path: /payroll
    upstream: '{upstream.url}'
    allow:
      - email_domains: [corp.example]
        grant: {{approvers: {{groups: [payroll-leads]}}, max_duration: 1h}}
  - {{name: wiki, path: /wiki, upstream: '{upstream.url}', allow: [{{email_domains: [corp.example]}}]}}
  - name: ledger
    path: /ledger
    upstream: '{upstream.url}'
    allow:
      - email_domains: [corp.example]
        grant: {{approvers: {{groups: [payroll-leads]}}, approvals: 2, approval_mfa: false}}
"""


async def hello(request: web.Request) -> web.Response:
    return web.Response(text="payroll")


WorldFactory = Callable[..., Awaitable[World]]


@pytest.fixture
def start_replicas(start_idp: IdpFactory, start_upstream: UpstreamFactory, proxy_process: StartProcess,
                   redis_factory: RedisFactory, tmp_path: Path) -> WorldFactory:
    async def start(*, webhook: str = "") -> World:
        redis = redis_factory.start()
        upstream = await start_upstream(routes=[web.get("/payroll/ws", ws_echo), web.get("/{path:.*}", hello)])
        ports, idp_port = [free_port(), free_port()], free_port()
        token_file = tmp_path / "admin-token"
        token_file.write_text(ADMIN_TOKEN + "\n")
        idp = await start_idp(port=idp_port, users=[ALICE, BOB, CAROL, DAVE], clients=[IdpClient(
            client_id=CLIENT_ID, client_secret=CLIENT_SECRET,
            redirect_uris=tuple(f"http://127.0.0.1:{port}/.ztproxy/callback" for port in ports))])
        replicas, texts = [], []
        for name, port, workers in (("A", ports[0], 1), ("B", ports[1], 2)):
            text = replica_yaml(port, idp.issuer, idp.mfa_acr, upstream, redis, token_file, webhook)
            texts.append(text)
            process = proxy_process(text, *(["--workers", str(workers)] if workers > 1 else []), wait=False)
            replicas.append(Replica(name, process, workers))
        for replica in replicas:
            wait_ready(replica.process.admin_url, replica.process.process)
        deadline = time.monotonic() + 30
        while int(redis.command("PUBSUB", "NUMSUB", CHANNEL)[1]) < 3:  # every worker follows the grants
            assert time.monotonic() < deadline, "the workers did not subscribe"
            await asyncio.sleep(0.05)
        # The file replica A was started with (proxy_process numbers them), for reloads.
        return World(redis, idp, upstream, replicas, token_file, tmp_path / "ztproxy-0.yaml", texts)

    return start


async def sign_in_bob(world: World, agent: UserAgent) -> Response:
    refused = await agent.login(world.a.url + "/payroll/report", "bob", BOB_PASSWORD, BOB_TOTP_SECRET)
    assert refused.status == 403, refused.text[:300]
    return refused


async def ask(agent: UserAgent, replica: Reachable, duration: str = "30m", reason: str = "month-end close",
              route: str = "payroll") -> str:
    token = (await page(agent, replica))["csrf_token"]
    code, text = await post(agent, replica, "/.ztproxy/access/requests",
                            {"csrf_token": token, "route": route, "reason": reason, "duration": duration},
                            accept="application/json")
    assert code == 200, text
    request_id = json.loads(text)["request"]["id"]
    assert isinstance(request_id, str)
    return request_id


async def test_ask_approve_use_revoke_across_replicas(start_replicas: WorldFactory) -> None:
    world = await start_replicas()
    async with UserAgent(new_connection_per_request=True) as bob, \
            UserAgent(new_connection_per_request=True) as carol:
        # Refused, and offered a way in.
        refused = await sign_in_bob(world, bob)
        assert 'href="/.ztproxy/access/?route=payroll"' in refused.text and "Request access" in refused.text
        form_page = await bob.get(world.a.url + "/.ztproxy/access/?route=payroll")
        form = form_page.form("reason")
        assert form_page.status == 200 and form is not None and form.fields["route"] == "payroll"
        assert "up to 1h" in form_page.text
        code, _ = await post(bob, world.a, "/.ztproxy/access/requests", {**form.fields, "reason": "month-end close",
                                                                         "duration": "30m"})
        assert code == 303
        mine = (await page(bob, world.a))["requests"]
        assert [(r["route"], r["state"], r["duration_s"], r["reason"]) for r in mine] == [
            ("payroll", "pending", 1800, "month-end close")]
        request_id = mine[0]["id"]

        # Carol signs in without a second factor: she sees that deciding needs one, and is refused if she tries.
        landed = await carol.login(world.a.url + "/.ztproxy/access/", "carol", CAROL_PASSWORD)
        assert landed.status == 200 and "Sign in with a second factor" in landed.text
        view = await page(carol, world.a)
        assert view["needs_mfa_to_decide"] is True and view["approver_of"] == ["ledger", "payroll"]
        code, text = await post(carol, world.a, f"/.ztproxy/access/requests/{request_id}/decide",
                                {"csrf_token": view["csrf_token"], "approve": "1"}, accept="application/json")
        assert code == 403 and "second factor" in text
        # Step-up at the IdP with TOTP, and back to the page with the request to decide.
        decided = await carol.login(world.a.url + "/.ztproxy/access/sign-in?mfa=1", "carol", CAROL_PASSWORD,
                                    CAROL_TOTP_SECRET)
        assert decided.status == 200 and "bob@corp.example" in decided.text and "month-end close" in decided.text
        decide = decided.form("comment")
        assert decide is not None and decide.action.endswith(f"/requests/{request_id}/decide")
        assert [name for name, _ in decide.buttons] == ["approve", "deny"]

        # Approved on replica B: Bob gets in on every worker of both replicas, at once.
        assert await status(bob, world.a) == 403
        token = (await page(carol, world.b))["csrf_token"]
        code, _ = await post(carol, world.b, f"/.ztproxy/access/requests/{request_id}/decide",
                             {"csrf_token": token, "approve": "1", "comment": "ok for the close"})
        approved_at = time.monotonic()
        assert code == 303
        await everywhere(bob, world, 200, approved_at, "the approval is not in force")
        code, text = await post(carol, world.a, f"/.ztproxy/access/requests/{request_id}/decide",
                                {"csrf_token": token, "approve": "1"}, accept="application/json")
        assert code == 409 and "access-request-conflict" in text  # approving twice
        async with bob.session.get(world.b.url + "/.ztproxy/me", headers=JSON) as response:
            me = await response.json()
        assert [grant["route"] for grant in me["grants"]] == ["payroll"]
        assert me["grants"][0]["ends_at"] - time.time() == pytest.approx(1800, abs=120)

        # Ended early by Carol: refused everywhere again, the open WebSocket closed.
        socket = await bob.session.ws_connect(world.b.url + "/payroll/ws")
        try:
            await socket.send_str("hi")
            assert (await socket.receive(timeout=5)).data == "echo:hi"
            active = (await page(carol, world.a))["active"]
            assert [grant["id"] for grant in active] == [request_id]
            code, _ = await post(carol, world.a, f"/.ztproxy/access/requests/{request_id}/revoke",
                                 {"csrf_token": token})
            revoked_at = time.monotonic()
            assert code == 303
            message = await socket.receive(timeout=BOUND)
            assert message.type is WSMsgType.CLOSE and (message.data, message.extra) == (1008, "access ended")
        finally:
            await socket.close()
        await everywhere(bob, world, 403, revoked_at, "the revoked grant still opens payroll")
        async with bob.session.get(world.a.url + "/.ztproxy/me", headers=JSON) as response:
            assert (await response.json())["grants"] == []
        await logged(world.a, '"grant_requested"', '"month-end close"', '"actor":"bob@corp.example"')
        await logged(world.a, '"grant_ended"', '"revoked"', '"actor":"carol@corp.example"', '"subject":"bob"')
        await logged(world.b, '"grant_started"', '"actor":"carol@corp.example"', '"route":"payroll"')


async def test_bad_posts_are_refused_and_change_nothing(start_replicas: WorldFactory) -> None:
    world = await start_replicas()
    async with UserAgent() as bob, UserAgent() as carol:
        await sign_in_bob(world, bob)
        token = (await page(bob, world.a))["csrf_token"]
        good = {"csrf_token": token, "route": "payroll", "reason": "month-end close", "duration": "30m"}
        requests = "/.ztproxy/access/requests"
        for fields, origin, expected, why in [
            ({**good, "csrf_token": ""}, "own", 403, "no CSRF token"),
            ({**good, "csrf_token": "0" * 64}, "own", 403, "a wrong CSRF token"),
            ({k: v for k, v in good.items() if k != "csrf_token"}, "own", 403, "no CSRF token field"),
            (good, "http://evil.example", 403, "another origin"),
            (good, None, 403, "no Origin"),
            (good, "null", 403, "an opaque origin"),
            ({**good, "duration": "2h"}, "own", 400, "a duration above the maximum"),
            ({**good, "duration": "soon"}, "own", 400, "a duration that is none"),
            ({**good, "reason": " "}, "own", 400, "a missing reason"),
            ({**good, "route": "wiki"}, "own", 400, "a route without a grant rule"),
            ({**good, "route": "nonexistent"}, "own", 400, "no such route"),
        ]:
            code, text = await post(bob, world.a, requests, fields, origin=origin)
            assert code == expected, (why, text[:300])
            assert "Traceback" not in text and "<!doctype html>" in text, why
        async with UserAgent() as nobody:  # signed out: an API client is told to sign in, a browser is sent to
            async with nobody.session.get(world.a.url + "/.ztproxy/access/", headers=JSON,
                                          allow_redirects=False) as response:
                assert response.status == 401
            code, _ = await post(nobody, world.a, requests, good)
            assert code == 401
            location = (await nobody.get(world.a.url + "/.ztproxy/access/")).location
            assert location is not None and location.startswith(world.idp.issuer)
        code, text = await post(bob, world.a, requests, {**good, "duration": "2h"}, accept="application/json")
        assert code == 400 and '"error":"access-request-invalid"' in text and "1h" in text
        assert (await page(bob, world.a))["requests"] == []  # nothing was created
        status_code, listed = await world.admin("GET", "/admin/grants")
        assert status_code == 200 and listed["grants"] == []

        # A session's token is its own: Carol's does not work with Bob's cookie, nor Bob's with hers.
        await carol.login(world.a.url + "/.ztproxy/access/sign-in?mfa=1", "carol", CAROL_PASSWORD,
                          CAROL_TOTP_SECRET)
        carols = (await page(carol, world.a))["csrf_token"]
        assert carols != token
        code, _ = await post(bob, world.a, requests, {**good, "csrf_token": carols})
        assert code == 403

        # Forged decisions: Bob (no approver) on his own request, Carol on hers.
        bobs = await ask(bob, world.a)
        code, text = await post(bob, world.a, f"/.ztproxy/access/requests/{bobs}/decide",
                                {"csrf_token": token, "approve": "1"}, accept="application/json")
        assert code == 403 and "not-an-approver" not in text and "approver" in text
        carols_own = await ask(carol, world.a, reason="audit")
        assert [r["id"] for r in (await page(carol, world.a))["to_decide"]] == [bobs]  # her own is not offered
        code, text = await post(carol, world.a, f"/.ztproxy/access/requests/{carols_own}/decide",
                                {"csrf_token": carols, "approve": "1"}, accept="application/json")
        assert code == 403 and "own access request" in text
        code, _ = await post(carol, world.a, f"/.ztproxy/access/requests/{bobs}/cancel", {"csrf_token": carols})
        assert code == 403  # only the requester cancels
        listed = {r["id"]: r for r in (await world.admin("GET", "/admin/grants"))[1]["grants"]}
        assert {r["state"] for r in listed.values()} == {"pending"} and all(r["approvals"] == 0
                                                                             for r in listed.values())

        # Cancelled, then too late for anything.
        code, _ = await post(bob, world.a, f"/.ztproxy/access/requests/{bobs}/cancel", {"csrf_token": token})
        assert code == 303
        for action, who, csrf in (("cancel", bob, token), ("decide", carol, carols)):
            code, text = await post(who, world.a, f"/.ztproxy/access/requests/{bobs}/{action}",
                                    {"csrf_token": csrf, "approve": "1"}, accept="application/json")
            assert code == 409 and "cancelled" in text
        # At most three pending per user.
        for _ in range(3):
            await ask(bob, world.a)
        code, text = await post(bob, world.a, requests, good, accept="application/json")
        assert code == 409 and "waiting for an answer" in text
        assert await status(bob, world.a) == 403


async def test_admin_api_cli_and_a_grant_that_ends_by_itself(start_replicas: WorldFactory) -> None:
    world = await start_replicas()
    async with UserAgent(new_connection_per_request=True) as bob:
        await sign_in_bob(world, bob)
        denied = await ask(bob, world.a)
        code, body = await world.admin("POST", f"/admin/grants/{denied}/deny", {"comment": "not now"})
        assert code == 200 and body["grant"]["state"] == "denied" and body["grant"]["comments"] == ["not now"]
        code, body = await world.admin("POST", f"/admin/grants/{denied}/approve", {})
        assert code == 409 and body["error"] == "not-pending"
        code, body = await world.admin("POST", "/admin/grants/0123456789abcdef/approve")
        assert code == 404
        code, body = await world.admin("POST", f"/admin/grants/{denied}/approve", {"comment": 5})
        assert code == 400
        code, body = await world.admin("GET", "/admin/grants?state=bogus")
        assert code == 400

        # Approved by an admin through the CLI: the grant runs five seconds, then ends on both replicas.
        short = await ask(bob, world.a, duration="5s")
        cli = [sys.executable, "-m", "ztproxy", "grants"]
        where = ["--admin-url", world.a.process.admin_url, "--token-file", str(world.token_file)]
        listed = subprocess.run([*cli, "list", "--state", "pending", *where], capture_output=True, text=True,
                                cwd=REPO, timeout=60)
        assert listed.returncode == 0 and short in listed.stdout and "bob@corp.example" in listed.stdout
        approved = subprocess.run([*cli, "approve", short, "--comment", "incident 42", *where],
                                  capture_output=True, text=True, cwd=REPO, timeout=60)
        approved_at = time.monotonic()
        assert approved.returncode == 0, approved.stderr
        assert approved.stdout.startswith(f"{short}  active until ") and "approvals 1/1" in approved.stdout
        await everywhere(bob, world, 200, approved_at, "the admin's approval is not in force")
        ended_at = time.monotonic()
        deadline = ended_at + 5 + BOUND
        for replica in world.replicas:
            while await status(bob, replica) == 200:
                assert time.monotonic() < deadline, f"{replica.name}: the grant did not end"
                await asyncio.sleep(0.1)
        code, body = await world.admin("GET", "/admin/grants?state=ended")
        assert [g["id"] for g in body["grants"]] == [short] and body["grants"][0]["approved_by"] == ["admin"]
        again = subprocess.run([*cli, "revoke", short, *where], capture_output=True, text=True, cwd=REPO, timeout=60)
        assert again.returncode == 1 and "not active" in again.stderr
        for token_file, code, words in ((world.config_path, 2, "not one line"), (world.wrong_token, 1, "not valid")):
            bad = subprocess.run([*cli, "approve", short, "--admin-url", world.a.process.admin_url,
                                  "--token-file", str(token_file)], capture_output=True, text=True, cwd=REPO,
                                 timeout=60)
            assert bad.returncode == code and words in bad.stderr and "Traceback" not in bad.stderr


async def test_grants_survive_a_restart_and_follow_the_route_across_reloads(
        start_replicas: WorldFactory, proxy_process: StartProcess) -> None:
    world = await start_replicas()
    async with UserAgent(new_connection_per_request=True) as bob:
        await sign_in_bob(world, bob)
        granted = await ask(bob, world.a)
        code, _ = await world.admin("POST", f"/admin/grants/{granted}/approve", {"comment": "on call"})
        assert code == 200
        await everywhere(bob, world, 200, time.monotonic(), "the approval is not in force")

        # Replica B restarted: the grant (and the session) are in Redis, not in the process.
        world.b.process.signal(signal.SIGTERM)
        world.b.process.process.wait(timeout=30)
        restarted = proxy_process(world.texts[1], "--workers", "2")
        assert await status(bob, Replica("B2", restarted, 2)) == 200

        # A reload that drops payroll's grant rule: the grant opens nothing; one that brings it back: it does.
        without = world.texts[0].replace("grant: {approvers: {groups: [payroll-leads]}, max_duration: 1h}",
                                         "users: [alice]")
        assert without != world.texts[0]
        for text, expected in ((without, 403), (world.texts[0], 200)):
            world.config_path.write_text(text, encoding="utf-8")
            world.a.process.signal(signal.SIGHUP)
            deadline = time.monotonic() + 30
            while await status(bob, world.a) != expected:
                assert time.monotonic() < deadline, f"the reload did not make payroll answer {expected}"
                await asyncio.sleep(0.1)
        code, listed = await world.admin("GET", "/admin/grants?state=active")
        assert [grant["id"] for grant in listed["grants"]] == [granted]


async def test_two_approvers_deciding_at_once_on_two_replicas_both_count(start_replicas: WorldFactory) -> None:
    world = await start_replicas()
    async with UserAgent() as bob, UserAgent() as carol, UserAgent() as dave:
        await sign_in_bob(world, bob)
        ledger = await ask(bob, world.a, route="ledger", duration="1h")
        tokens = []
        for agent, name, password in ((carol, "carol", CAROL_PASSWORD), (dave, "dave", DAVE.password)):
            landed = await agent.login(world.a.url + "/.ztproxy/access/", name, password)
            assert landed.status == 200 and "month-end close" in landed.text  # no second factor asked here
            tokens.append((await page(agent, world.a))["csrf_token"])
        results = await asyncio.gather(*(
            post(agent, replica, f"/.ztproxy/access/requests/{ledger}/decide",
                 {"csrf_token": token, "approve": "1"}, accept="application/json")
            for agent, replica, token in ((carol, world.a, tokens[0]), (dave, world.b, tokens[1]))))
        assert [code for code, _ in results] == [200, 200], results
        code, listed = await world.admin("GET", "/admin/grants?state=active")
        [granted] = listed["grants"]
        assert granted["id"] == ledger and sorted(granted["approved_by"]) == ["carol@corp.example",
                                                                              "dave@corp.example"]
        assert granted["ends_at"] - time.time() == pytest.approx(3600, abs=120)  # from the second approval
        assert await status(bob, world.b, "/ledger/books") == 200
        assert await status(bob, world.b) == 403  # a grant for the ledger opens nothing else

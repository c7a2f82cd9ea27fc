"""Grant webhooks: each step reaches a real local HTTP server, signed, retried after a failure.

The receiver checks ``X-Ztproxy-Signature`` against the shared secret the way a receiver
would (HMAC-SHA256 of "{timestamp}.{body}", compared in constant time) and fails the first
delivery with a 503, which the proxy tries again. A webhook for other approver groups hears
nothing; a Slack-format one gets a ``text``. Nobody waits for any of it: the forms answer
while the receiver is still failing.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.conftest import UpstreamFactory
from tests.integration.test_grants import World, WorldFactory, ask, page, post, sign_in_bob, start_replicas
from tests.support.idp import CAROL_PASSWORD, CAROL_TOTP_SECRET
from tests.support.user_agent import UserAgent

pytestmark = pytest.mark.integration
__all__ = ["start_replicas"]  # the fixture, used by name

SECRET = "webhook-secret-for-tests-0123456789abcdef"


class Receiver:
    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []  # verified deliveries, in order
        self.refused = 0  # attempts answered 503 (the first one) or with a bad signature
        self.slack: list[str] = []

    async def signed(self, request: web.Request) -> web.Response:
        body = await request.read()
        timestamp = request.headers.get("X-Ztproxy-Timestamp", "")
        expected = "v1=" + hmac.new(SECRET.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(request.headers.get("X-Ztproxy-Signature", ""), expected) \
                or abs(time.time() - int(timestamp)) > 300:
            self.refused += 1
            return web.Response(status=401)
        if self.refused == 0:  # the first delivery fails: the proxy must try again
            self.refused += 1
            return web.Response(status=503)
        self.received.append(json.loads(body))
        return web.Response(status=204)

    async def other(self, request: web.Request) -> web.Response:
        raise AssertionError("a webhook for other approver groups was called")

    async def slack_hook(self, request: web.Request) -> web.Response:
        self.slack.append((await request.json())["text"])
        return web.Response(status=200)

    async def events(self, count: int) -> list[str]:
        deadline = time.monotonic() + 30
        while len(self.received) < count:
            assert time.monotonic() < deadline, f"only {[r['event'] for r in self.received]} arrived"
            await asyncio.sleep(0.05)
        return [delivery["event"] for delivery in self.received]


async def test_every_step_is_posted_signed_and_retried(start_replicas: WorldFactory, start_upstream: UpstreamFactory,
                                                       tmp_path: Path) -> None:
    receiver = Receiver()
    hooks = await start_upstream(routes=[web.post("/signed", receiver.signed), web.post("/other", receiver.other),
                                         web.post("/slack", receiver.slack_hook)])
    secret_file = tmp_path / "webhook-secret"
    secret_file.write_text(SECRET + "\n")
    world: World = await start_replicas(webhook=f"""  webhooks:
    - {{url: '{hooks.url}/signed', groups: [payroll-leads], secret_file: '{secret_file}'}}
    - {{url: '{hooks.url}/other', groups: [finance-leads], secret_file: '{secret_file}'}}
    - {{url: '{hooks.url}/slack', format: slack}}""")
    async with UserAgent() as bob, UserAgent() as carol:
        await sign_in_bob(world, bob)
        first = await ask(bob, world.a, duration="20m", reason="month-end close")
        assert (await receiver.events(1)) == ["grant.requested"]
        delivered = receiver.received[0]["request"]
        assert delivered == {"id": first, "route": "payroll", "requester": "bob@corp.example",
                             "reason": "month-end close", "duration_s": 1200, "approvals": 0, "state": "pending",
                             "ends_at": None}
        await carol.login(world.a.url + "/.ztproxy/access/sign-in?mfa=1", "carol", CAROL_PASSWORD, CAROL_TOTP_SECRET)
        token = (await page(carol, world.a))["csrf_token"]
        code, _ = await post(carol, world.b, f"/.ztproxy/access/requests/{first}/decide",
                             {"csrf_token": token, "approve": "1"})
        assert code == 303
        assert await receiver.events(3) == ["grant.requested", "grant.approved", "grant.started"]
        started = receiver.received[2]["request"]
        assert started["state"] == "active" and started["approvals"] == 1
        assert started["ends_at"] == pytest.approx(time.time() + 1200, abs=120)
        code, _ = await post(carol, world.a, f"/.ztproxy/access/requests/{first}/revoke", {"csrf_token": token})
        assert code == 303
        second = await ask(bob, world.a)
        code, _ = await post(carol, world.a, f"/.ztproxy/access/requests/{second}/decide",
                             {"csrf_token": token, "deny": "1", "comment": "not now"})
        assert code == 303
        third = await ask(bob, world.a)
        bobs = (await page(bob, world.a))["csrf_token"]
        code, _ = await post(bob, world.a, f"/.ztproxy/access/requests/{third}/cancel", {"csrf_token": bobs})
        assert code == 303
        # Each delivery travels on its own: their order may differ, never their content.
        assert sorted(await receiver.events(8)) == sorted(
            ["grant.requested", "grant.approved", "grant.started", "grant.ended", "grant.requested", "grant.denied",
             "grant.requested", "grant.cancelled"])
        by_id = {(r["event"], r["request"]["id"]): r["request"] for r in receiver.received}
        assert by_id["grant.ended", first]["state"] == "ended"
        assert by_id["grant.denied", second]["state"] == "denied"
        assert by_id["grant.cancelled", third]["state"] == "cancelled"
        assert receiver.refused == 1  # one 503, retried; every signature checked out
        deadline = time.monotonic() + 30
        while len(receiver.slack) < 8:
            assert time.monotonic() < deadline, receiver.slack
            await asyncio.sleep(0.05)
        assert any("bob@corp.example asks for access to *payroll* for 20m: month-end close" in text
                   for text in receiver.slack)

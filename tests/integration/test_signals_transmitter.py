"""ztproxy as a Shared Signals transmitter: an app behind it hears of the sessions ztproxy ends.

The app is a real local HTTP server: it serves the route, receives pushed SETs at /ssf (RFC
8935), and verifies each against the proxy's JWKS as it verifies assertions. Users sign in at
the real IdP; a session ends by sign-out and by a security event from the tests' transmitter
(a process of its own).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from joserfc import jwt
from joserfc.errors import BadSignatureError
from joserfc.jwk import ECKey, KeySet

from tests.conftest import ProxyFactory, UpstreamFactory
from tests.integration import test_revocation as replicas
from tests.integration.login_env import ROUTES, LoginWorld, start_world
from tests.integration.test_process import StartProcess
from tests.integration.test_signals import AUDIENCE, signed_in, subject_of
from tests.support.idp import ALICE_PASSWORD, BOB_PASSWORD, IdpFactory
from tests.support.redis import RedisFactory
from tests.support.ssf_transmitter import RunningTransmitter, TransmitterFactory
from tests.unit.test_metrics import changes, scrape
from ztproxy.assertion import ASSERTION_HEADER
from ztproxy.assertion.keys import KeyRing
from ztproxy.assertion.signer import sid_for
from ztproxy.config import load_text
from ztproxy.sessions.manager import Ending
from ztproxy.signals import events as ev
from ztproxy.signals import outbox

pytestmark = pytest.mark.integration

APP_SECRET = "Bearer the-apps-push-secret"


class App:
    """The app's SET endpoint: answers 503 to the first ``refuse_first`` pushes, then 202."""

    def __init__(self, refuse_first: int) -> None:
        self.refuse_first = refuse_first
        self.received: list[str] = []
        self.assertions: list[str] = []
        self.arrived = asyncio.Condition()

    async def events(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != APP_SECRET:
            return web.json_response({"err": "authentication_failed", "description": "no"}, status=400)
        if request.content_type != "application/secevent+jwt":
            return web.json_response({"err": "invalid_request", "description": "not a SET"}, status=400)
        token = await request.text()
        if self.refuse_first > 0:
            self.refuse_first -= 1
            return web.Response(status=503)
        async with self.arrived:
            self.received.append(token)
            self.arrived.notify_all()
        return web.Response(status=202)

    async def page(self, request: web.Request) -> web.Response:
        if ASSERTION_HEADER in request.headers:
            self.assertions.append(request.headers[ASSERTION_HEADER])
        return web.json_response({"path": request.path})

    async def sets(self, count: int) -> list[str]:
        async with self.arrived:
            await asyncio.wait_for(self.arrived.wait_for(lambda: len(self.received) >= count), 30)
        return list(self.received)


class World:
    def __init__(self, login: LoginWorld, app: App, transmitter: RunningTransmitter) -> None:
        self.login, self.app, self.transmitter = login, app, transmitter

    async def verified(self, token: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """What an app does: the SET's header and claims, checked against the proxy's JWKS."""
        async with aiohttp.ClientSession() as client:
            async with client.get(self.login.url + "/.well-known/ztproxy/jwks.json") as response:
                keys = KeySet.import_key_set(await response.json())
        decoded = jwt.decode(token, keys, algorithms=["ES256"])
        return dict(decoded.header), dict(decoded.claims)


@pytest.fixture
async def world(start_idp: IdpFactory, start_proxy: ProxyFactory, start_upstream: UpstreamFactory,
                start_transmitter: TransmitterFactory) -> World:
    transmitter = await start_transmitter()
    app = App(refuse_first=1)

    async def upstream(**_: object) -> object:
        return await start_upstream(routes=[web.post("/ssf", app.events), web.route("*", "/{path:.*}", app.page)])

    sections = f"""
signals:
  transmitters:
    - {{name: idp, issuer: "{transmitter.issuer}", audience: "{AUDIENCE}",
       bearer_token: "{transmitter.management_token}"}}
  receivers:
    - {{name: the-app, url: "UPSTREAM/ssf", route: app, authorization_header: "{APP_SECRET}"}}
"""
    routes = ROUTES + sections.replace("{", "{{").replace("}", "}}").replace("UPSTREAM", "{upstream}")
    login = await start_world(start_idp, start_proxy, upstream, routes=routes)  # type: ignore[arg-type]
    async with asyncio.timeout(10):
        while await transmitter.stream() is None:
            await asyncio.sleep(0.05)
    return World(login, app, transmitter)


async def test_the_app_hears_of_each_ended_session_in_a_set_it_verifies_with_the_jwks(world: World) -> None:
    before = scrape()
    login = world.login
    alice = await signed_in(login, "alice", ALICE_PASSWORD)
    bob = await signed_in(login, "bob", BOB_PASSWORD)
    try:
        alice_sub = await subject_of(alice, login)
        alice_sid = jwt.decode(world.app.assertions[0], KeySet.import_key_set(await _jwks(login)),
                               algorithms=["ES256"]).claims["sid"]
        # A security event ends alice's session; the app is down for the first push (503): retried.
        status, _ = await world.transmitter.push(event=ev.SESSION_REVOKED, sub_id={
            "format": "iss_sub", "iss": login.idp.issuer, "sub": alice_sub})
        assert status == 202
        [first] = await world.app.sets(1)
        header, claims = await world.verified(first)
        assert header["typ"] == "secevent+jwt" and header["alg"] == "ES256"
        assert claims["iss"] == login.url and claims["aud"] == login.url  # the route's audience: its origin
        assert "exp" not in claims and claims["jti"]
        assert claims["sub_id"] == {"format": "complex", "session": {"format": "opaque", "id": alice_sid},
                                    "user": {"format": "iss_sub", "iss": login.url, "sub": alice_sub}}
        event = claims["events"][ev.SESSION_REVOKED]
        assert event["initiating_entity"] == "system" and "session-revoked" in event["reason_admin"]["en"]
        # Bob signs out: the app hears it, initiated by the user.
        bob_sub = await subject_of(bob, login)
        page = await bob.get(login.url + "/.ztproxy/logout")
        form = page.form("csrf")
        assert form is not None
        assert (await bob.request("POST", form.action, data=form.fields)).status == 303
        second = (await world.app.sets(2))[1]
        _, claims = await world.verified(second)
        assert claims["events"][ev.SESSION_REVOKED]["initiating_entity"] == "user"
        assert claims["sub_id"]["user"]["sub"] == bob_sub
        delta = changes(before, scrape())
        assert delta("ztproxy_signals_sent_total", receiver="the-app", result="retried") == 1
        assert delta("ztproxy_signals_sent_total", receiver="the-app", result="delivered") == 2
        # A SET signed by anyone else fails the app's check.
        forged = jwt.encode({"alg": "ES256", "kid": header["kid"], "typ": "secevent+jwt"}, claims,
                            ECKey.generate_key("P-256"))
        with pytest.raises(BadSignatureError):
            await world.verified(forged)
    finally:
        await alice.close()
        await bob.close()


async def _jwks(login: LoginWorld) -> Any:
    async with aiohttp.ClientSession() as client:
        async with client.get(login.url + "/.well-known/ztproxy/jwks.json") as response:
            document = await response.json()
            assert isinstance(document, dict)
            return document



async def test_an_administrator_revoking_a_session_on_another_process_tells_the_app(
        start_idp: IdpFactory, start_upstream: UpstreamFactory, proxy_process: StartProcess,
        redis_factory: RedisFactory, tmp_path: Path) -> None:
    """The admin listener (its own process with --workers 2) pushes the SET itself."""
    app = App(refuse_first=0)
    receiver = await start_upstream(routes=[web.post("/ssf", app.events)])
    extra = f"""signals:
  receivers:
    - {{name: the-app, url: "{receiver.url}/ssf", route: app, authorization_header: "{APP_SECRET}"}}
"""
    world = await replicas.start_world(start_idp, start_upstream, proxy_process, redis_factory.start(), tmp_path,
                                       extra=extra, workers=(2,))
    async with world.agent:
        handle = world.ticket().public_id
        status, _ = await world.admin(world.signed_in_on, "DELETE", f"/admin/sessions/{handle}")
        assert status == 200
        [token] = await app.sets(1)
        async with aiohttp.ClientSession() as client:
            async with client.get(world.signed_in_on.process.url + "/.well-known/ztproxy/jwks.json") as response:
                keys = KeySet.import_key_set(await response.json())
        claims = jwt.decode(token, keys, algorithms=["ES256"]).claims
        assert claims["events"][ev.SESSION_REVOKED]["initiating_entity"] == "admin"
        assert claims["sub_id"] == {"format": "complex", "session": {"format": "opaque",
                                                                     "id": sid_for(handle, "app")}}


async def test_a_refused_set_is_not_retried_and_a_full_queue_drops_the_oldest(
        start_upstream: UpstreamFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """The outbox on its own, against a real HTTP receiver that refuses every SET (400)."""
    refused: list[str] = []

    async def refuse(request: web.Request) -> web.Response:
        refused.append(await request.text())
        return web.json_response({"err": "invalid_audience", "description": "not ours"}, status=400)

    receiver = await start_upstream(routes=[web.post("/ssf", refuse)])
    config = load_text(f"""
routes:
  - {{name: app, upstream: 'http://127.0.0.1:9', allow: [{{public: true}}]}}
signals:
  receivers: [{{name: strict, url: "{receiver.url}/ssf", route: app}}]
""")
    keyring = KeyRing.from_config(config.assertion, now=time.time())
    monkeypatch.setattr(outbox, "MAX_PENDING", 2)
    before = scrape()
    async with aiohttp.ClientSession() as http:
        box = outbox.Outbox(config.signals.receivers, outbox.audiences(config), config.public_url,
                            lambda: keyring, http)
        ending = Ending("admin", "test", "corp", "u-1")
        box.ended(["s:" + "1" * 64, "s:" + "2" * 64, "s:" + "3" * 64], ending)  # one too many: the first dropped
        running = asyncio.create_task(box.run())
        try:
            async with asyncio.timeout(20):
                while changes(before, scrape())("ztproxy_signals_sent_total", receiver="strict",
                                                result="rejected") < 2:
                    await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)  # a retry would come after 1 s at the soonest; none must
        finally:
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
    delta = changes(before, scrape())
    assert delta("ztproxy_signals_sent_total", receiver="strict", result="dropped") == 1
    assert delta("ztproxy_signals_sent_total", receiver="strict", result="retried") == 0
    assert len(refused) == 2

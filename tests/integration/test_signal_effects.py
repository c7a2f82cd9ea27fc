"""Security signals that change access without ending sessions: MFA taken away, claims changed,
a device reported not compliant. A transmitter run as a process pushes them; users sign in at
the real IdP; a device shows its posture with a signed posture token; WebSockets a grant let in
(just-in-time access, asked and approved at ``/.ztproxy/access/``) are judged again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from pathlib import Path

import pytest
from aiohttp import WSMsgType, web

from tests.conftest import ProxyFactory, UpstreamFactory
from tests.integration import test_grants as grants
from tests.integration import test_revocation as replicas
from tests.integration.login_env import ROUTES, LoginWorld, start_world
from tests.integration.test_process import StartProcess
from tests.integration.test_revocation import ws_echo
from tests.integration.test_signals import AUDIENCE, signed_in, subject_of
from tests.support.idp import ALICE_PASSWORD, BOB_PASSWORD, BOB_TOTP_SECRET, IdpFactory
from tests.support.posture import PostureSigner
from tests.support.redis import RedisFactory
from tests.support.ssf_transmitter import RunningTransmitter, TransmitterFactory
from tests.support.user_agent import UserAgent
from tests.unit.test_metrics import Samples, changes, scrape
from ztproxy.signals import events as ev

pytestmark = pytest.mark.integration

EXTRA_ROUTES = """
  - name: managed
    path: /managed
    upstream: {upstream}
    websockets: true
    allow: [{{email_domains: [corp.example], device: {{managed: true}}}}]
  - name: ledger
    path: /ledger
    upstream: {upstream}
    allow: [{{groups: [employees], grant: {{approvers: {{groups: [employees]}}, approval_mfa: false}}}}]
  - name: vault
    path: /vault
    upstream: {upstream}
    allow: [{{groups: [employees], mfa: true, grant: {{approvers: {{groups: [employees]}}, approval_mfa: false}}}}]
"""
GRANTED = ("ledger", "vault")  # routes a grant opens: the ledger's rule needs no MFA, the vault's does


class World:
    def __init__(self, login: LoginWorld, transmitter: RunningTransmitter, signer: PostureSigner) -> None:
        self.login = login
        self.transmitter = transmitter
        self.signer = signer

    @property
    def url(self) -> str:
        return self.login.url

    def user(self, sub: str) -> dict[str, str]:
        return {"format": "iss_sub", "iss": self.login.idp.issuer, "sub": sub}

    async def push(self, event: str, sub_id: Mapping[str, object], **payload: object) -> None:
        status, body = await self.transmitter.push(event=event, sub_id=sub_id, payload=payload)
        assert status == 202, body

    async def status(self, agent: UserAgent, path: str, device: str | None = None) -> int:
        headers = {"Accept": "application/json"}
        if device is not None:
            headers["X-Device-Posture"] = self.signer.token(device, managed=True)
        async with agent.session.get(self.url + path, headers=headers, allow_redirects=False) as response:
            await response.read()
            return response.status


@pytest.fixture
async def world(start_idp: IdpFactory, start_proxy: ProxyFactory, start_upstream: UpstreamFactory,
                start_transmitter: TransmitterFactory, posture_signer: PostureSigner, tmp_path: Path) -> World:
    transmitter = await start_transmitter()
    key_file = tmp_path / "posture.pem"
    key_file.write_text(posture_signer.public_pem)
    sections = f"""
devices:
  signed: {{public_key_file: {key_file}}}
signals:
  transmitters:
    - {{name: edr, issuer: "{transmitter.issuer}", audience: "{AUDIENCE}",
       bearer_token: "{transmitter.management_token}"}}
"""
    # start_world formats the routes (their {upstream}): the other sections' braces are doubled.
    routes = ROUTES + EXTRA_ROUTES + sections.replace("{", "{{").replace("}", "}}")
    login = await start_world(start_idp, start_proxy, _ws_upstream(start_upstream), routes=routes)
    async with asyncio.timeout(10):  # the stream is set up in the background at start
        while await transmitter.stream() is None:
            await asyncio.sleep(0.05)
    return World(login, transmitter, posture_signer)


def _ws_upstream(start_upstream: UpstreamFactory) -> UpstreamFactory:
    """The upstream, with a WebSocket echo at /managed/ws, /ledger/ws and /vault/ws."""
    async def start(**kwargs: object) -> object:
        async def hello(request: web.Request) -> web.Response:
            return web.json_response({"path": request.path})
        return await start_upstream(routes=[*(web.get(f"/{route}/ws", ws_echo) for route in ("managed", *GRANTED)),
                                            web.route("*", "/{path:.*}", hello)])
    return start  # type: ignore[return-value]


def enforced(before: Samples, event: str) -> float:
    return changes(before, scrape())("ztproxy_signal_enforcement_seconds_count", event=event)


async def test_an_assurance_decrease_takes_mfa_away_until_the_user_steps_up(world: World) -> None:
    before = scrape()
    bob = UserAgent()
    try:
        assert (await world.login.login(bob, "/mfa/", "bob", BOB_PASSWORD, BOB_TOTP_SECRET)).status == 200
        assert await world.status(bob, "/mfa/") == 200
        sub = await subject_of(bob, world.login)
        # More assurance changes nothing; less takes MFA away from the sessions, which go on.
        await world.push(ev.ASSURANCE_LEVEL_CHANGE, world.user(sub), change_direction="increase",
                         event_timestamp=int(time.time()) - 5)
        assert await world.status(bob, "/mfa/") == 200
        await world.push(ev.ASSURANCE_LEVEL_CHANGE, world.user(sub), change_direction="decrease",
                         namespace="NIST-AAL", current_level="aal1", previous_level="aal2",
                         event_timestamp=int(time.time()))
        async with bob.session.get(world.url + "/mfa/", headers={"Accept": "application/json"},
                                   allow_redirects=False) as response:
            assert response.status == 401
            assert "insufficient_user_authentication" in response.headers["WWW-Authenticate"]
        assert await world.status(bob, "/app/") == 200  # the session itself goes on
        async with bob.session.get(world.url + "/.ztproxy/me", headers={"Accept": "application/json"}) as response:
            me = await response.json()
            assert me["mfa"] is False, me
        assert enforced(before, "assurance-level-change") == 1
        # The step-up: a new sign-in with the second factor makes a session that has MFA again.
        page = await world.login.login(bob, "/mfa/", "bob", BOB_PASSWORD, BOB_TOTP_SECRET)
        assert page.status == 200
        assert await world.status(bob, "/mfa/") == 200
    finally:
        await bob.close()


async def test_changed_claims_apply_at_once_and_a_late_older_change_is_ignored(world: World) -> None:
    alice = await signed_in(world.login, "alice", ALICE_PASSWORD)
    before = scrape()
    try:
        user = world.user(await subject_of(alice, world.login))
        assert await world.status(alice, "/payroll-group/") == 403
        now = int(time.time())
        await world.push(ev.TOKEN_CLAIMS_CHANGE, user, claims={"groups": ["employees", "payroll"]},
                         event_timestamp=now)
        assert await world.status(alice, "/payroll-group/") == 200
        # Older than the one applied: it must not undo it.
        await world.push(ev.TOKEN_CLAIMS_CHANGE, user, claims={"groups": ["employees"]}, event_timestamp=now - 30)
        assert await world.status(alice, "/payroll-group/") == 200
        await world.push(ev.TOKEN_CLAIMS_CHANGE, user, claims={"groups": ["employees"], "department": "sales"},
                         event_timestamp=now + 1)
        assert await world.status(alice, "/payroll-group/") == 403
        async with alice.session.get(world.url + "/.ztproxy/me", headers={"Accept": "application/json"}) as response:
            me = await response.json()
        assert me["groups"] == ["employees"], me
        delta = changes(before, scrape())
        assert delta("ztproxy_signals_total", event="token-claims-change", result="applied") == 2
        assert delta("ztproxy_signals_total", event="token-claims-change", result="ignored") == 1
        assert enforced(before, "token-claims-change") == 1
        # Claims for a user with no session here change nothing, and say so.
        await world.push(ev.TOKEN_CLAIMS_CHANGE, world.user("nobody-here"), claims={"groups": ["payroll"]})
        assert changes(before, scrape())("ztproxy_signals_total", event="token-claims-change",
                                         result="unmatched") == 1
    finally:
        await alice.close()


async def test_a_device_reported_not_compliant_fails_device_rules_until_compliant(world: World) -> None:
    alice = await signed_in(world.login, "alice", ALICE_PASSWORD)
    before = scrape()
    device = {"format": "complex", "device": {"format": "opaque", "id": "laptop-7"},
              "tenant": {"format": "opaque", "id": "corp"}}
    try:
        assert await world.status(alice, "/managed/", device="laptop-7") == 200
        socket = await alice.session.ws_connect(world.url.replace("http", "ws") + "/managed/ws",
                                                headers={"X-Device-Posture": world.signer.token("laptop-7",
                                                                                                managed=True)})
        await socket.send_str("hi")
        assert (await socket.receive(timeout=10)).data == "echo:hi"
        now = int(time.time())
        await world.push(ev.DEVICE_COMPLIANCE_CHANGE, device, previous_status="compliant",
                         current_status="not-compliant", event_timestamp=now)
        # The open socket closes at once (1008), and the next request is refused, whatever the posture says.
        closing = await socket.receive(timeout=10)
        assert closing.type in (WSMsgType.CLOSE, WSMsgType.CLOSED) and socket.close_code == 1008
        async with alice.session.get(world.url + "/managed/", headers={
                "X-Device-Posture": world.signer.token("laptop-7", managed=True)}) as response:
            assert response.status == 403
            assert "not compliant" in await response.text()
        async with UserAgent() as bob:  # another device is not touched (alice's session would see a device change)
            assert (await world.login.login(bob, "/app/", "bob", BOB_PASSWORD)).status == 200
            assert await world.status(bob, "/managed/", device="laptop-8") == 200
        assert await world.status(alice, "/app/", device="laptop-7") == 200  # no device rule there
        await world.push(ev.DEVICE_COMPLIANCE_CHANGE, device, previous_status="not-compliant",
                         current_status="compliant", event_timestamp=now - 10)  # late and older: no effect
        assert await world.status(alice, "/managed/", device="laptop-7") == 403
        await world.push(ev.DEVICE_COMPLIANCE_CHANGE, device, previous_status="not-compliant",
                         current_status="compliant", event_timestamp=now + 1)
        assert await world.status(alice, "/managed/", device="laptop-7") == 200
        assert enforced(before, "device-compliance-change") == 1
        await socket.close()
    finally:
        await alice.close()


async def test_a_websocket_a_grant_let_in_outlives_an_unrelated_effect_and_closes_when_refused(
        world: World) -> None:
    bob, sockets = UserAgent(), []
    alice = await signed_in(world.login, "alice", ALICE_PASSWORD)  # the approver
    try:
        assert (await world.login.login(bob, "/mfa/", "bob", BOB_PASSWORD, BOB_TOTP_SECRET)).status == 200
        user = world.user(await subject_of(bob, world.login))
        assert [await world.status(bob, f"/{route}/") for route in GRANTED] == [403, 403]  # no grant yet
        asked = [await grants.ask(bob, world, route=route) for route in GRANTED]
        token = (await grants.page(alice, world))["csrf_token"]
        for request_id in asked:
            code, text = await grants.post(alice, world, f"/.ztproxy/access/requests/{request_id}/decide",
                                           {"csrf_token": token, "approve": "1"}, accept="application/json")
            assert code == 200, text
        assert [await world.status(bob, f"/{route}/") for route in GRANTED] == [200, 200]
        for route in GRANTED:
            sockets.append(await bob.session.ws_connect(world.url.replace("http", "ws") + f"/{route}/ws"))
            await sockets[-1].send_str("hi")
            assert (await sockets[-1].receive(timeout=10)).data == "echo:hi"
        ledger, vault = sockets

        # MFA taken away: the vault's rule needs it, so its socket closes; the ledger's does not.
        await world.push(ev.ASSURANCE_LEVEL_CHANGE, user, change_direction="decrease", namespace="NIST-AAL",
                         current_level="aal1", previous_level="aal2", event_timestamp=int(time.time()))
        closing = await vault.receive(timeout=10)
        assert closing.type is WSMsgType.CLOSE and (closing.data, closing.extra) == (1008, "access withdrawn")
        # The same effect was judged for the ledger's socket before the vault's closed: bob's grant holds.
        await ledger.send_str("still there")
        assert (await ledger.receive(timeout=10)).data == "echo:still there"
        assert not ledger.closed
        assert await world.status(bob, "/ledger/") == 200

        # Claims changed: bob is no longer an employee, which the ledger's rule needs, grant or not.
        await world.push(ev.TOKEN_CLAIMS_CHANGE, user, claims={"groups": ["contractors"]},
                         event_timestamp=int(time.time()) + 1)
        closing = await ledger.receive(timeout=10)
        assert closing.type is WSMsgType.CLOSE and (closing.data, closing.extra) == (1008, "access withdrawn")
        assert await world.status(bob, "/ledger/") == 403
    finally:
        for socket in sockets:
            await socket.close()
        await bob.close()
        await alice.close()


async def test_effects_need_a_usable_subject(world: World) -> None:
    """A device change without a device, an unknown status: counted, logged, nothing changed."""
    alice = await signed_in(world.login, "alice", ALICE_PASSWORD)
    before = scrape()
    try:
        user = world.user(await subject_of(alice, world.login))
        await world.push(ev.DEVICE_COMPLIANCE_CHANGE, user, current_status="not-compliant")
        await world.push(ev.DEVICE_COMPLIANCE_CHANGE, {"format": "complex", "device": {"format": "opaque",
                                                                                        "id": "laptop-7"}},
                         current_status="on-fire")
        await world.push(ev.TOKEN_CLAIMS_CHANGE, user, claims="not an object")
        delta = changes(before, scrape())
        assert delta("ztproxy_signals_total", event="device-compliance-change", result="unmatched") == 1
        assert delta("ztproxy_signals_total", event="device-compliance-change", result="ignored") == 1
        assert delta("ztproxy_signals_total", event="token-claims-change", result="ignored") == 1
        assert await world.status(alice, "/managed/", device="laptop-7") == 200
    finally:
        await alice.close()




async def test_effects_reach_every_replica_at_once_and_survive_a_restart(
        start_idp: IdpFactory, start_upstream: UpstreamFactory, proxy_process: StartProcess,
        redis_factory: RedisFactory, tmp_path: Path, start_transmitter: TransmitterFactory,
        posture_signer: PostureSigner) -> None:
    transmitter = await start_transmitter()
    key_file = tmp_path / "posture.pem"
    key_file.write_text(posture_signer.public_pem)
    # Risk off: the test is refused many times in a row on purpose (a denial burst would lock the session).
    extra = f"""devices: {{signed: {{public_key_file: {key_file}}}}}
risk: {{enabled: false}}
signals:
  transmitters:
    - {{name: edr, issuer: "{transmitter.issuer}", audience: "{AUDIENCE}",
       bearer_token: "{transmitter.management_token}"}}
"""
    routes = """  - {name: managed, path: /managed, upstream: '{upstream}', allow: [{device: {managed: true}}]}
  - {name: payroll, path: /payroll, upstream: '{upstream}', allow: [{groups: [payroll]}]}
"""
    # Replica A (one worker) receives the pushes; B has two workers; both follow the one Redis.
    world = await replicas.start_world(start_idp, start_upstream, proxy_process, redis_factory.start(), tmp_path,
                                       extra=extra, workers=(1, 2), routes=routes)
    laptop = posture_signer.token("laptop-7", managed=True)

    async def statuses(replica: replicas.Replica, path: str) -> set[int]:
        """What the replica answers alice, over fresh connections (so each worker of it answers)."""
        found = set()
        for _ in range(12 if replica.workers > 1 else 2):
            async with world.agent.session.get(replica.process.url + path, allow_redirects=False, headers={
                    "Accept": "application/json", "X-Device-Posture": laptop}) as response:
                await response.read()
                found.add(response.status)
        return found

    async def everywhere(path: str, status: int, since: float | None = None) -> None:
        for replica in world.replicas:
            async with asyncio.timeout(replicas.BOUND * 10):
                while (seen := await statuses(replica, path)) != {status}:
                    assert since is None or time.monotonic() - since < replicas.BOUND, (replica.name, path, seen)
                    await asyncio.sleep(0.02)

    async with world.agent:
        async with asyncio.timeout(15):  # both replicas set the stream up; the second takes it over
            while await transmitter.stream() is None:
                await asyncio.sleep(0.05)
        await everywhere("/managed", 200)
        await everywhere("/payroll", 403)
        device = {"format": "complex", "device": {"format": "opaque", "id": "laptop-7"}}
        assert (await transmitter.push(event=ev.DEVICE_COMPLIANCE_CHANGE, sub_id=device,
                                       payload={"current_status": "not-compliant"}))[0] == 202
        await everywhere("/managed", 403, since=time.monotonic())
        assert (await transmitter.push(event=ev.TOKEN_CLAIMS_CHANGE, sub_id={"format": "email",
                                                                             "email": "alice@corp.example"},
                                       payload={"claims": {"groups": ["payroll"]}}))[0] == 202
        await everywhere("/payroll", 200, since=time.monotonic())
        # A restarted replica reads the effects from the store: still refused, still granted.
        b = world.replicas[1]
        b.process.process.terminate()
        b.process.process.wait(timeout=30)
        b.process = proxy_process(b.config_path.read_text(), "--workers", "2")
        await everywhere("/managed", 403)
        await everywhere("/payroll", 200)
        assert (await transmitter.push(event=ev.DEVICE_COMPLIANCE_CHANGE, sub_id=device,
                                       payload={"current_status": "compliant"}))[0] == 202
        await everywhere("/managed", 200, since=time.monotonic())

"""Security signals: a Shared Signals transmitter (run as a process) pushes SETs, and access ends at once.

The transmitter serves its SSF configuration, keys and stream management; ztproxy creates its
stream there at start, then accepts pushed SETs at /.ztproxy/ssf/events. Users sign in at the
real IdP; their next request after a signal shows its effect.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey

from tests.conftest import ProxyFactory, UpstreamFactory
from tests.integration import test_revocation as replicas
from tests.integration.login_env import ROUTES, LoginWorld, start_world
from tests.integration.test_process import StartProcess
from tests.support.idp import ALICE_PASSWORD, BOB_PASSWORD, BOB_TOTP_SECRET, IdpFactory
from tests.support.redis import RedisFactory
from tests.support.ssf_transmitter import RunningTransmitter, TransmitterFactory
from tests.support.user_agent import UserAgent
from tests.unit.test_metrics import changes, scrape
from ztproxy.signals import events as ev

pytestmark = pytest.mark.integration

AUDIENCE = "https://ztproxy.corp.example/ssf"


class Signals:
    def __init__(self, world: LoginWorld, transmitter: RunningTransmitter) -> None:
        self.world = world
        self.transmitter = transmitter

    def user(self, sub: str) -> dict[str, str]:
        return {"format": "iss_sub", "iss": self.world.idp.issuer, "sub": sub}


@pytest.fixture
async def signals(start_idp: IdpFactory, start_proxy: ProxyFactory, start_upstream: UpstreamFactory,
                  start_transmitter: TransmitterFactory) -> Signals:
    return await start_signals(start_idp, start_proxy, start_upstream, start_transmitter)


async def start_signals(start_idp: IdpFactory, start_proxy: ProxyFactory, start_upstream: UpstreamFactory,
                        start_transmitter: TransmitterFactory) -> Signals:
    """A proxy receiving a transmitter's signals (its stream set up and verified), users at the real IdP."""
    transmitter = await start_transmitter()
    before = scrape()
    world = await start_world(start_idp, start_proxy, start_upstream, routes=ROUTES + f"""
signals:
  transmitters:
    - name: edr
      issuer: "{transmitter.issuer}"
      audience: "{AUDIENCE}"
      bearer_token: "{transmitter.management_token}"
""")
    async with asyncio.timeout(10):  # the stream is set up in the background at start
        while (stream := await transmitter.stream()) is None:
            await asyncio.sleep(0.05)
    assert stream["delivery"]["endpoint_url"] == world.url + "/.ztproxy/ssf/events"
    assert set(ev.ACTED_ON) <= set(stream["events_requested"])
    async with asyncio.timeout(10):  # then verified: the transmitter echoed the state ztproxy asked for
        while not changes(before, scrape())("ztproxy_signals_total", event="verification", result="applied"):
            await asyncio.sleep(0.05)
    return Signals(world, transmitter)


async def signed_in(world: LoginWorld, username: str, password: str, totp: str | None = None) -> UserAgent:
    agent = UserAgent()
    page = await world.login(agent, "/app/", username, password, totp)
    assert page.status == 200
    return agent


async def api_status(agent: UserAgent, world: LoginWorld) -> int:
    async with agent.session.get(world.url + "/app/", headers={"Accept": "application/json"},
                                 allow_redirects=False) as response:
        return response.status


async def subject_of(agent: UserAgent, world: LoginWorld) -> str:
    async with agent.session.get(world.url + "/.ztproxy/me", headers={"Accept": "application/json"}) as response:
        return str((await response.json())["subject"])


async def test_session_revoked_and_credential_change_end_the_users_sessions(signals: Signals) -> None:
    world = signals.world
    before = scrape()
    alice = await signed_in(world, "alice", ALICE_PASSWORD)
    bob = await signed_in(world, "bob", BOB_PASSWORD, BOB_TOTP_SECRET)
    try:
        sub = await subject_of(alice, world)
        status, _ = await signals.transmitter.push(event=ev.SESSION_REVOKED, sub_id=signals.user(sub),
                                                   payload={"event_timestamp": int(time.time())})
        assert status == 202
        assert await api_status(alice, world) == 401  # at once, the next request
        assert await api_status(bob, world) == 200  # nobody else
        status, _ = await signals.transmitter.push(event=ev.CREDENTIAL_CHANGE,
                                                   sub_id={"format": "email", "email": "Bob@corp.example"},
                                                   payload={"credential_type": "password", "change_type": "update"})
        assert status == 202 and await api_status(bob, world) == 401
        delta = changes(before, scrape())
        assert delta("ztproxy_signals_total", event="session-revoked", result="applied") == 1
        assert delta("ztproxy_signals_total", event="credential-change", result="applied") == 1
        # Each timed from its acceptance to the first request it refused.
        assert delta("ztproxy_signal_enforcement_seconds_count", event="session-revoked") == 1
        assert delta("ztproxy_signal_enforcement_seconds_count", event="credential-change") == 1
    finally:
        await alice.close()
        await bob.close()


async def test_a_disabled_account_cannot_sign_in_until_enabled(signals: Signals) -> None:
    world = signals.world
    alice = await signed_in(world, "alice", ALICE_PASSWORD)
    sub = await subject_of(alice, world)
    await alice.close()
    assert (await signals.transmitter.push(event=ev.ACCOUNT_DISABLED, sub_id=signals.user(sub)))[0] == 202
    async with UserAgent() as again:
        page = await world.login(again, "/app/", "alice", ALICE_PASSWORD)
        assert page.status == 400 and "disabled" in page.text
    assert (await signals.transmitter.push(event=ev.ACCOUNT_ENABLED, sub_id=signals.user(sub)))[0] == 202
    async with UserAgent() as later:
        assert (await world.login(later, "/app/", "alice", ALICE_PASSWORD)).status == 200


async def test_bad_sets_get_the_documented_answer_and_change_nothing(signals: Signals) -> None:
    world, transmitter = signals.world, signals.transmitter
    alice = await signed_in(world, "alice", ALICE_PASSWORD)
    before = scrape()
    try:
        user = signals.user(await subject_of(alice, world))
        forger = ECKey.generate_key("P-256", parameters={"kid": "ssf-1"})
        forged = jwt.encode({"alg": "ES256", "kid": "ssf-1", "typ": "secevent+jwt"},
                            {"iss": transmitter.issuer, "aud": AUDIENCE, "iat": int(time.time()), "jti": "f-1",
                             "sub_id": user, "events": {ev.SESSION_REVOKED: {}}}, forger)
        cases = {
            "authentication_failed": {"authorization": "Bearer not-the-secret"},
            "invalid_audience": {"aud": "https://someone-else.example"},
            "invalid_request": {"iat": time.time() - 3600},
            "invalid_key": {"raw": True, "token": forged},
        }
        for err, extra in cases.items():
            status, body = await transmitter.push(event=ev.SESSION_REVOKED, sub_id=user, **extra)
            assert status == 400 and f'"err": "{err}"' in body.replace('":"', '": "'), (err, body)
        status, body = await transmitter.push(event=ev.SESSION_REVOKED, sub_id=user, content_type="text/plain")
        assert status == 400 and "invalid_request" in body
        # A SET accepted once is refused the second time (any replica would).
        assert (await transmitter.push(event="https://example.com/unknown-event", sub_id=user, jti="j-1"))[0] == 202
        status, body = await transmitter.push(event=ev.SESSION_REVOKED, sub_id=user, jti="j-1")
        assert status == 400 and "invalid_request" in body
        assert await api_status(alice, world) == 200  # none of it touched alice's session
        assert changes(before, scrape())("ztproxy_signals_total", result="rejected", reason="invalid_key") == 1
        # An event older than one already applied for the subject changes nothing.
        now = time.time()
        assert (await transmitter.push(event=ev.ACCOUNT_ENABLED, sub_id=user,
                                       payload={"event_timestamp": now}))[0] == 202
        assert (await transmitter.push(event=ev.ACCOUNT_ENABLED, sub_id=user,
                                       payload={"event_timestamp": now - 60}))[0] == 202
    finally:
        await alice.close()


async def test_a_signal_pushed_to_one_replica_is_enforced_by_every_replica(
        start_idp: IdpFactory, start_upstream: UpstreamFactory, proxy_process: StartProcess,
        redis_factory: RedisFactory, tmp_path: Path, start_transmitter: TransmitterFactory) -> None:
    transmitter = await start_transmitter()
    extra = f"""signals:
  transmitters:
    - {{name: edr, issuer: "{transmitter.issuer}", audience: "{AUDIENCE}",
       bearer_token: "{transmitter.management_token}"}}
"""
    # Replica A (one worker) receives the pushes; B has two workers. They share Redis.
    world = await replicas.start_world(start_idp, start_upstream, proxy_process, redis_factory.start(), tmp_path,
                                       extra=extra, workers=(1, 2))
    async with world.agent:
        await world.allowed_everywhere()
        async with asyncio.timeout(15):  # both replicas set the stream up; the second takes it over
            while await transmitter.stream() is None:
                await asyncio.sleep(0.05)
        status, _ = await transmitter.push(event=ev.SESSION_REVOKED,
                                           sub_id={"format": "email", "email": "alice@corp.example"})
        accepted_at = time.monotonic()
        assert status == 202
        times = await world.denied_within(world.replicas, accepted_at)
        print(f"denied after the signal (s): {times}")


async def test_polled_signals_are_applied_then_acknowledged(start_idp: IdpFactory, start_proxy: ProxyFactory,
                                                            start_upstream: UpstreamFactory,
                                                            start_transmitter: TransmitterFactory) -> None:
    transmitter = await start_transmitter()
    world = await start_world(start_idp, start_proxy, start_upstream, routes=ROUTES + f"""
signals:
  transmitters:
    - name: idp
      issuer: "{transmitter.issuer}"
      audience: "{AUDIENCE}"
      bearer_token: "{transmitter.management_token}"
      delivery: poll
      poll_interval: 0.05s
""")
    async with asyncio.timeout(10):
        while (stream := await transmitter.stream()) is None:
            await asyncio.sleep(0.05)
    assert stream["delivery"]["method"] == "urn:ietf:rfc:8936"
    alice = await signed_in(world, "alice", ALICE_PASSWORD)
    try:
        user = {"format": "email", "email": "alice@corp.example"}
        assert (await transmitter.push(event=ev.SESSION_REVOKED, sub_id=user, jti="p-1"))[0] == 202
        assert (await transmitter.push(event=ev.SESSION_REVOKED, sub_id=user, aud="https://other.example",
                                       jti="p-2"))[0] == 202
        async with asyncio.timeout(10):  # polled, applied, acknowledged; the bad one reported
            while not ("p-1" in (polled := await transmitter.polled())["acked"] and "p-2" in polled["errors"]):
                await asyncio.sleep(0.05)
        assert polled["errors"]["p-2"]["err"] == "invalid_audience" and polled["queued"] == []
        assert await api_status(alice, world) == 401
    finally:
        await alice.close()

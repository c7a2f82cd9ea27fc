"""Security signals gone wrong: each bad SET, unknown subject, a transmitter that is down and a
stream the transmitter disabled gets the documented answer, a log event and a metric, and
changes nothing else (a signed-in user keeps her session throughout).
"""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any

import orjson
import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, OctKey
from structlog.testing import capture_logs

from tests.conftest import ProxyFactory, UpstreamFactory, free_port
from tests.integration.login_env import ROUTES, LoginWorld, start_world
from tests.integration.test_signals import AUDIENCE, Signals, api_status, signed_in, start_signals, subject_of
from tests.support.idp import ALICE_PASSWORD, IdpFactory
from tests.support.ssf_transmitter import TransmitterFactory
from tests.support.user_agent import UserAgent
from tests.unit.test_metrics import Samples, changes, scrape
from ztproxy.signals import events as ev

pytestmark = pytest.mark.integration


@pytest.fixture
async def signals(start_idp: IdpFactory, start_proxy: ProxyFactory, start_upstream: UpstreamFactory,
                  start_transmitter: TransmitterFactory) -> Signals:
    return await start_signals(start_idp, start_proxy, start_upstream, start_transmitter)


def _unsigned(claims: dict[str, Any]) -> str:
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(orjson.dumps(value)).rstrip(b"=").decode()
    return f"{part({'alg': 'none', 'typ': 'secevent+jwt'})}.{part(claims)}."


async def test_every_bad_set_is_refused_with_its_error_logged_and_counted(signals: Signals) -> None:
    world, transmitter = signals.world, signals.transmitter
    alice = await signed_in(world, "alice", ALICE_PASSWORD)
    try:
        user = signals.user(await subject_of(alice, world))
        now = int(time.time())

        def claims(**changed: Any) -> dict[str, Any]:
            return {"iss": transmitter.issuer, "aud": AUDIENCE, "iat": now, "jti": f"bad-{time.monotonic_ns()}",
                    "sub_id": user, "events": {ev.SESSION_REVOKED: {}}, **changed}

        forger = ECKey.generate_key("P-256", parameters={"kid": "ssf-1"})
        header = {"alg": "ES256", "kid": "ssf-1", "typ": "secevent+jwt"}
        cases: list[tuple[str, str, dict[str, Any]]] = [
            ("not the push secret", "authentication_failed", {"authorization": "Bearer not-the-secret"}),
            ("not a SET media type", "invalid_request", {"content_type": "application/json"}),
            ("forged", "invalid_key", {"raw": True, "token": jwt.encode(header, claims(), forger)}),
            ("a symmetric algorithm", "invalid_key", {"raw": True, "token": jwt.encode(
                {"alg": "HS256", "kid": "ssf-1", "typ": "secevent+jwt"}, claims(),
                OctKey.import_key(b"0123456789abcdef0123456789abcdef"), algorithms=["HS256"])}),
            ("unsigned", "invalid_key", {"raw": True, "token": _unsigned(claims())}),
            ("another issuer", "invalid_issuer", {"raw": True, "token": jwt.encode(
                header, claims(iss="https://stranger.example"), forger)}),
            ("another audience", "invalid_audience", {"aud": "https://someone-else.example"}),
            ("expired (issued an hour ago)", "invalid_request", {"iat": now - 3600}),
            ("issued in the future", "invalid_request", {"iat": now + 3600}),
            ("unreadable", "invalid_request", {"raw": True, "token": "this is not a JWT"}),
            ("oversized", "invalid_request", {"raw": True, "token": "e30." + "A" * 70_000 + ".sig"}),
        ]
        for name, err, extra in cases:
            before = scrape()
            with capture_logs() as logs:
                status, body = await transmitter.push(event=ev.SESSION_REVOKED, sub_id=user, **extra)
            assert status == 400 and f'"err": "{err}"' in body.replace('":"', '": "'), (name, body)
            assert {"event": "ssf_event_refused", "err": err} in [
                {"event": entry["event"], "err": entry.get("err")} for entry in logs], (name, logs)
            assert changes(before, scrape())("ztproxy_signals_total", result="rejected", reason=err) == 1, name
        # Replayed: a jti accepted once is refused the second time, with its log and count.
        assert (await transmitter.push(event=ev.SESSION_REVOKED, sub_id={"format": "email", "email":
                                       "nobody@corp.example"}, jti="once"))[0] == 202
        before = scrape()
        with capture_logs() as logs:
            status, body = await transmitter.push(event=ev.SESSION_REVOKED, sub_id=user, jti="once")
        assert status == 400 and "invalid_request" in body and "accepted before" in body
        assert any(entry["event"] == "ssf_event_refused" for entry in logs)
        assert changes(before, scrape())("ztproxy_signals_total", result="rejected", reason="invalid_request") == 1
        assert await api_status(alice, world) == 200  # none of it touched alice's session
    finally:
        await alice.close()


async def test_a_subject_nobody_here_has_is_accepted_and_changes_nothing(signals: Signals) -> None:
    world, transmitter = signals.world, signals.transmitter
    alice = await signed_in(world, "alice", ALICE_PASSWORD)
    before = scrape()
    try:
        with capture_logs() as logs:
            for subject in ({"format": "email", "email": "stranger@corp.example"},
                            signals.user("no-such-subject"),
                            {"format": "complex", "session": {"format": "opaque", "id": "no-such-sid"}}):
                assert (await transmitter.push(event=ev.SESSION_REVOKED, sub_id=subject))[0] == 202
        assert [entry["outcome"] for entry in logs if entry["event"] == "ssf_event"] == ["unmatched"] * 3
        assert changes(before, scrape())("ztproxy_signals_total", event="session-revoked", result="unmatched") == 3
        assert await api_status(alice, world) == 200
    finally:
        await alice.close()


async def reported_and_nothing_else(world: LoginWorld, before: Samples, problem: str) -> None:
    """The stream's problem is counted; sign-in and access go on as without signals."""
    async with asyncio.timeout(10):
        while not changes(before, scrape())("ztproxy_signal_stream_problems_total", transmitter="edr",
                                            problem=problem):
            await asyncio.sleep(0.05)
    async with UserAgent() as agent:
        assert (await world.login(agent, "/app/", "alice", ALICE_PASSWORD)).status == 200


async def test_a_transmitter_that_is_down_is_asked_again_and_nothing_else_stops(
        start_idp: IdpFactory, start_proxy: ProxyFactory, start_upstream: UpstreamFactory) -> None:
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    before = scrape()
    with capture_logs() as logs:
        world = await start_world(start_idp, start_proxy, start_upstream, routes=ROUTES + f"""
signals:
  transmitters:
    - {{{{name: edr, issuer: "{down}", audience: "{AUDIENCE}"}}}}
""")
        await reported_and_nothing_else(world, before, "setup-failed")
    assert any(entry["event"] == "ssf_stream_setup_failed" for entry in logs)


async def test_a_stream_the_transmitter_disabled_is_reported(
        start_idp: IdpFactory, start_proxy: ProxyFactory, start_upstream: UpstreamFactory,
        start_transmitter: TransmitterFactory) -> None:
    transmitter = await start_transmitter()
    await transmitter.set_status("disabled")
    before = scrape()
    with capture_logs() as logs:
        world = await start_world(start_idp, start_proxy, start_upstream, routes=ROUTES + f"""
signals:
  transmitters:
    - {{{{name: edr, issuer: "{transmitter.issuer}", audience: "{AUDIENCE}",
       bearer_token: "{transmitter.management_token}"}}}}
""")
        await reported_and_nothing_else(world, before, "disabled")
    assert {"event": "ssf_stream_not_enabled", "status": "disabled"} in [
        {"event": entry["event"], "status": entry.get("status")} for entry in logs]

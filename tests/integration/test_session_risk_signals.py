"""Each session risk signal end to end, on one proxy with a real IdP: what the user meets, what the app learns."""

from __future__ import annotations

import asyncio
import base64
import time

import aiohttp
import orjson
from structlog.testing import capture_logs
from yarl import URL

from tests.conftest import ProxyFactory, UpstreamFactory
from tests.integration.login_env import LoginWorld, start_world
from tests.support.idp import ALICE_PASSWORD, BOB_PASSWORD, BOB_TOTP_SECRET, IdpFactory
from tests.support.redis import RedisServer
from tests.support.user_agent import BROWSER_ACCEPT, UserAgent
from ztproxy.policy.model import Device
from ztproxy.posture import PostureQuery

FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"


async def world_with(start_idp: IdpFactory, start_proxy: ProxyFactory, start_upstream: UpstreamFactory,
                     risk: str) -> LoginWorld:
    return await start_world(start_idp, start_proxy, start_upstream, risk=risk)


def copy_of(agent: UserAgent, url: str, local_address: str | None = None) -> UserAgent:
    jar = aiohttp.CookieJar(unsafe=True)
    for cookie in agent.cookie_jar:
        jar.update_cookies({cookie.key: cookie.value}, URL(url))
    return UserAgent(local_address=local_address, cookie_jar=jar)


async def get(agent: UserAgent, url: str, **headers: str) -> tuple[int, str]:
    async with agent.session.get(url, headers={"Accept": "application/json", **headers},
                                 allow_redirects=False) as response:
        return response.status, await response.text()


def assertion_risk(world: LoginWorld) -> str:
    token = world.last_upstream_request()["headers"]["X-Ztproxy-Jwt-Assertion"]
    payload = token.split(".")[1]
    claims = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    risk: str = claims["risk"]
    return risk


async def test_another_browser_ends_the_session_with_a_page_that_says_why(
        start_idp: IdpFactory, start_proxy: ProxyFactory, start_upstream: UpstreamFactory) -> None:
    world = await world_with(start_idp, start_proxy, start_upstream, "")
    async with UserAgent() as owner:
        await world.login(owner, "/app/", "alice", ALICE_PASSWORD)
        assert (await get(owner, world.url + "/app/"))[0] == 200
        assert assertion_risk(world) == "low"
        status, text = await get(owner, world.url + "/app/", **{"User-Agent": FIREFOX})
        assert status == 403 and "used from another browser" in text
        assert (await get(owner, world.url + "/app/"))[0] == 401  # ended: the owner signs in again
        # A browser without a session goes to sign-in as usual.
        async with owner.session.get(world.url + "/app/", headers={"Accept": BROWSER_ACCEPT},
                                     allow_redirects=False) as response:
            assert response.status == 302


async def test_a_revoke_ends_every_session_of_the_user_when_configured(
        start_idp: IdpFactory, start_proxy: ProxyFactory, start_upstream: UpstreamFactory) -> None:
    world = await world_with(start_idp, start_proxy, start_upstream, "  revoke_all_sessions: true")
    async with UserAgent() as laptop, UserAgent() as phone:
        await world.login(laptop, "/app/", "alice", ALICE_PASSWORD)
        await world.login(phone, "/app/", "alice", ALICE_PASSWORD)
        assert (await get(phone, world.url + "/app/"))[0] == 200
        assert (await get(laptop, world.url + "/app/", **{"User-Agent": FIREFOX}))[0] == 403
        assert (await get(phone, world.url + "/app/"))[0] == 401


async def test_a_burst_of_denials_locks_the_session_on_every_route(
        start_idp: IdpFactory, start_proxy: ProxyFactory, start_upstream: UpstreamFactory) -> None:
    world = await world_with(start_idp, start_proxy, start_upstream,
                             "  denials: {count: 3, window: 60s, lock: 5m}")
    async with UserAgent() as prober:
        await world.login(prober, "/app/", "alice", ALICE_PASSWORD)
        assert (await get(prober, world.url + "/payroll-group/"))[0] == 403
        assert (await get(prober, world.url + "/payroll-group/a"))[0] == 403
        status, text = await get(prober, world.url + "/payroll-group/b")  # the count-th: the lock
        assert status == 403 and "refused access many times" in text
        for path in ("/app/", "/payroll-group/", "/app/x"):
            status, text = await get(prober, world.url + path)
            assert status == 403 and "locked" in text, path
        status, text = await get(prober, world.url + "/.ztproxy/me")
        risk = orjson.loads(text)["risk"]
        assert risk["level"] == "high" and [s["signal"] for s in risk["signals"]] == ["denial-burst"]


async def test_a_burst_of_denials_while_the_store_is_away_is_refused_and_its_unwritten_lock_logged(
        start_idp: IdpFactory, start_proxy: ProxyFactory, start_upstream: UpstreamFactory,
        redis_server: RedisServer) -> None:
    # The session's copy outlives the store (cache_ttl); the lock the burst calls for is written
    # in the background, where a store that is away must be a warning, not a task's lost error.
    world = await start_world(start_idp, start_proxy, start_upstream,
                              risk="  denials: {count: 3, window: 60s, lock: 5m}",
                              sessions=f"  store: '{redis_server.url}'\n  cache_ttl: 60s\n  store_timeout: 1s")
    async with UserAgent() as prober:
        await world.login(prober, "/app/", "alice", ALICE_PASSWORD)
        assert (await get(prober, world.url + "/app/"))[0] == 200  # the copy this worker keeps
        redis_server.stop(kill=True)
        with capture_logs() as logs:
            statuses = [(await get(prober, world.url + f"/payroll-group/{n}"))[0] for n in range(3)]
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not any(e["event"] == "risk_state_not_written" for e in logs):
                await asyncio.sleep(0.05)
        assert statuses == [403, 403, 403]  # refused, the third one as the burst it is
        unwritten = [e for e in logs if e["event"] == "risk_state_not_written"]
        assert [e["signal"] for e in unwritten] == ["denial-burst"], logs
        assert not [e for e in logs if e["log_level"] in ("error", "critical")], logs


async def test_a_burst_of_sign_ins_locks_the_address_for_sign_ins(
        start_idp: IdpFactory, start_proxy: ProxyFactory, start_upstream: UpstreamFactory) -> None:
    world = await world_with(start_idp, start_proxy, start_upstream,
                             "  sign_ins: {count: 3, window: 60s, lock: 5m}")

    async def start_sign_in(local_address: str) -> tuple[int, str]:
        async with UserAgent(local_address=local_address) as agent:
            async with agent.session.get(world.url + "/app/", allow_redirects=False) as response:
                return response.status, await response.text()

    assert [(await start_sign_in("127.0.1.1"))[0] for _ in range(2)] == [302, 302]
    status, text = await start_sign_in("127.0.1.1")  # the count-th
    assert status == 403 and "too many sign-ins" in text.lower()
    assert (await start_sign_in("127.0.1.1"))[0] == 403
    assert (await start_sign_in("127.0.2.1"))[0] == 302  # another address signs in as usual


async def test_the_assertion_carries_the_risk_level(
        start_idp: IdpFactory, start_proxy: ProxyFactory, start_upstream: UpstreamFactory) -> None:
    world = await world_with(start_idp, start_proxy, start_upstream, "")
    async with UserAgent(local_address="127.0.1.1") as owner:
        await world.login(owner, "/app/", "alice", ALICE_PASSWORD)
        assert (await get(owner, world.url + "/app/"))[0] == 200
        assert assertion_risk(world) == "low"
        async with copy_of(owner, world.url, "127.0.2.1") as moved:
            assert (await get(moved, world.url + "/app/"))[0] == 200  # network-changed: logged here
            assert assertion_risk(world) == "medium"


async def test_a_moved_session_signs_in_again_on_a_route_that_needs_mfa_and_goes_on_from_there(
        start_idp: IdpFactory, start_proxy: ProxyFactory, start_upstream: UpstreamFactory) -> None:
    world = await world_with(start_idp, start_proxy, start_upstream, "")
    async with UserAgent(local_address="127.0.1.1") as owner:
        await world.login(owner, "/mfa/", "bob", BOB_PASSWORD, BOB_TOTP_SECRET)
        assert (await get(owner, world.url + "/mfa/"))[0] == 200
        async with copy_of(owner, world.url, "127.0.2.1") as moved:
            final = await world.login(moved, "/mfa/", "bob", BOB_PASSWORD, BOB_TOTP_SECRET)
            assert final.status == 200, final.text[:300]
            assert any("prompt=login" in (step.location or "") for step in moved.history)
            status, text = await get(moved, world.url + "/.ztproxy/me")
            risk = orjson.loads(text)["risk"]
            assert (risk["signed_in_from"], risk["level"], risk["signals"]) == ("127.0.2.0/24", "low", [])
            assert (await get(moved, world.url + "/mfa/"))[0] == 200


class HeaderDevice:
    """A posture provider for this test: the device id a request's X-Test-Device header names."""

    async def start(self) -> None:
        return None

    async def observe(self, query: PostureQuery, device: Device | None) -> Device | None:
        named = query.headers.get("X-Test-Device")
        return Device(id=named) if named else device

    async def close(self) -> None:
        return None


async def test_another_device_ends_the_session(
        start_idp: IdpFactory, start_proxy: ProxyFactory, start_upstream: UpstreamFactory) -> None:
    devices = f"devices: {{custom: [{{provider: '{__name__}:HeaderDevice'}}]}}"
    world = await start_world(start_idp, start_proxy, start_upstream, sessions=devices)
    async with UserAgent() as owner:
        await world.login(owner, "/app/", "alice", ALICE_PASSWORD)
        assert (await get(owner, world.url + "/app/", **{"X-Test-Device": "laptop-1"}))[0] == 200
        assert (await get(owner, world.url + "/app/", **{"X-Test-Device": "laptop-1"}))[0] == 200
        status, text = await get(owner, world.url + "/app/", **{"X-Test-Device": "laptop-2"})
        assert status == 403 and "used from another device" in text
        assert (await get(owner, world.url + "/app/", **{"X-Test-Device": "laptop-1"}))[0] == 401


async def test_with_risk_off_nothing_is_judged(
        start_idp: IdpFactory, start_proxy: ProxyFactory, start_upstream: UpstreamFactory) -> None:
    world = await world_with(start_idp, start_proxy, start_upstream, "  enabled: false")
    async with UserAgent(local_address="127.0.1.1") as owner:
        await world.login(owner, "/app/", "alice", ALICE_PASSWORD)
        async with copy_of(owner, world.url, "127.0.2.1") as elsewhere:
            assert (await get(elsewhere, world.url + "/app/", **{"User-Agent": FIREFOX}))[0] == 200
        assert (await get(owner, world.url + "/app/"))[0] == 200
        status, text = await get(owner, world.url + "/.ztproxy/me")
        assert orjson.loads(text)["risk"]["level"] == "low"

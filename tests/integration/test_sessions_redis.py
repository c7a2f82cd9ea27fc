"""Sign-in with sessions in a real Redis: shared across proxies, fail closed while it is down."""

from __future__ import annotations

import aiohttp

from tests.conftest import ProxyFactory, UpstreamFactory
from tests.integration.login_env import start_world
from tests.support.idp import ALICE_PASSWORD, IdpFactory
from tests.support.redis import RedisFactory
from tests.support.user_agent import UserAgent


async def status(url: str, cookie: str | None) -> tuple[int, str]:
    headers = {"Accept": "application/json"}
    if cookie:
        headers["Cookie"] = f"ztproxy_session={cookie}"
    async with aiohttp.ClientSession() as client:
        async with client.get(url, headers=headers, allow_redirects=False) as response:
            return response.status, await response.text()


async def test_sessions_live_in_redis_and_survive_its_restart_but_not_its_absence(
        start_idp: IdpFactory, start_proxy: ProxyFactory, start_upstream: UpstreamFactory,
        redis_factory: RedisFactory) -> None:
    redis = redis_factory.start(persist=True)
    world = await start_world(start_idp, start_proxy, start_upstream,
                              sessions=f"  store: {redis.url}\n  cache_ttl: 0s")
    async with UserAgent() as agent:
        await world.login(agent, "/app/", "alice", ALICE_PASSWORD)
        cookie = next(c.value for c in agent.cookie_jar if c.key == "ztproxy_session")
    assert (await status(world.url + "/app/", cookie))[0] == 200
    # The store holds ciphertext under a hashed id: nothing of the cookie or the user.
    keys = redis.command("KEYS", "*")
    dump = b"".join(redis.command("DUMP", key) or b"" for key in keys)
    assert b"alice" not in dump and cookie.encode() not in dump

    redis.stop()
    code, body = await status(world.url + "/app/", cookie)
    assert code == 503 and "session-store-unavailable" in body  # fail closed, with a clear page
    assert (await status(world.url + "/public/", None))[0] == 200  # public routes need no store

    redis.start()  # persisted: the session is back, and the proxy reconnects by itself
    assert (await status(world.url + "/app/", cookie))[0] == 200

"""Sign-in with sessions in a real Redis: shared across proxies, fail closed while it is down."""

from __future__ import annotations

import os

import aiohttp
from structlog.testing import capture_logs

from tests.conftest import ProxyFactory, UpstreamFactory
from tests.integration.login_env import start_world
from tests.support.idp import ALICE_PASSWORD, IdpFactory
from tests.support.redis import RedisFactory
from tests.support.user_agent import UserAgent
from ztproxy.config.sessions import SessionsConfig
from ztproxy.sessions.indexes import legacy_email_index, legacy_handle_index, legacy_user_index, user_index
from ztproxy.sessions.manager import SessionManager
from ztproxy.sessions.model import Session
from ztproxy.sessions.sealing import LEGACY_TICKET_VERSION, Ticket, seal, unseal
from ztproxy.sessions.store import open_store


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


async def test_sessions_of_the_previous_release_keep_working_after_the_upgrade(
        start_idp: IdpFactory, start_proxy: ProxyFactory, start_upstream: UpstreamFactory,
        redis_factory: RedisFactory) -> None:
    """A rolling upgrade: sessions the releases before stored (version 1 cookies, 66-character keys,
    format 1; the long index names) are served by this one; a session in a format it cannot read
    (one a newer release wrote) is a fresh sign-in with a warning that says so, never a 500."""
    redis = redis_factory.start()
    world = await start_world(start_idp, start_proxy, start_upstream, sessions=f"  store: {redis.url}\n  cache_ttl: 0s")
    async with UserAgent() as agent:
        await world.login(agent, "/app/", "alice", ALICE_PASSWORD)
        ticket = Ticket.parse(next(c.value for c in agent.cookie_jar if c.key == "ztproxy_session"))
    assert ticket is not None and not ticket.legacy and len(ticket.store_key) == 34
    store = open_store(SessionsConfig(store=redis.url, store_timeout=2.0))
    try:
        plain = unseal(ticket, await store.get(ticket.store_key) or b"")
        session = Session.from_bytes(plain or b"")
        assert session is not None and session.id_token is None  # no logout_id_token_hint: not kept
        # What a release before stored for the same sign-in, through the same store script.
        old = Ticket(os.urandom(32), os.urandom(32), LEGACY_TICKET_VERSION)
        await store.put(old.store_key, seal(old, session.to_bytes(legacy=True)), 600, indexes=[
            legacy_user_index("demo", "alice"), legacy_handle_index(old.public_id),
            legacy_email_index("demo", "alice@corp.example")])
        code, body = await status(world.url + "/app/", old.cookie_value())
        assert code == 200 and "alice" in body, body[:200]
        # A newer release's format: refused as no session (401 to an API client), logged, never a 500.
        newer = Ticket.new()
        await store.put(newer.store_key, seal(newer, b'[3,"demo","alice"]'), 600)
        with capture_logs() as logs:
            code, body = await status(world.url + "/app/", newer.cookie_value())
        assert code == 401, body[:200]
        assert [entry for entry in logs if entry["event"] == "session_format_unknown"] == [
            {"event": "session_format_unknown", "session": newer.public_id, "ticket_version": 2,
             "log_level": "warning"}]
        # Indexed under the names of its release, the new session under the short ones; a
        # revocation of the user finds both.
        assert await store.members(user_index("demo", "alice")) == [ticket.store_key]
        assert await store.members(legacy_user_index("demo", "alice")) == [old.store_key]
        sessions = SessionManager(store, SessionsConfig(store=redis.url, store_timeout=2.0))
        assert await sessions.matching("demo", subject="alice") == {ticket.store_key, old.store_key}
    finally:
        await store.close()

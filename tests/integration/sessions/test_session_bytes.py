"""What a session costs in a real Redis and a real Redis Cluster, and the sessions of the release before.

Issue 19 asks for at most 1 KiB of Redis per session: the session's own keys (the sealed
session, its handle index, its IdP session's index) and its share of its user's indexes,
by ``MEMORY USAGE``. Redis keeps a sorted set of at most 128 members of at most 64 bytes as
a listpack (a few bytes a member); one longer member turns it into a skiplist of about a
kilobyte, which is why store keys are 34 characters now. Sessions stored by the release
before (version 1 tickets: 66-character keys, format 1) open, refresh and end as they did.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable

import orjson
import pytest

from tests.support.redis import RedisFactory, RedisServer
from tests.support.redis_cluster import ClusterSetup
from ztproxy.config.sessions import SessionsConfig
from ztproxy.risk import Browser, RiskState, Seen
from ztproxy.sessions.manager import (
    SessionManager,
    email_index,
    handle_index,
    idp_session_index,
    user_index,
)
from ztproxy.sessions.model import Session
from ztproxy.sessions.sealing import LEGACY_TICKET_VERSION, Ticket, seal, unseal
from ztproxy.sessions.store import open_store

pytestmark = pytest.mark.integration

T0 = 1_800_000_000.0
KIB = 1024


def make_session(subject: str = "carol", idp_session: str = "4hb4rcwMv0hSkSFWGBIG8") -> Session:
    """A session as the demo IdP's sign-in makes it (claims, refresh token, IdP session, risk state)."""
    email = f"{subject}@corp.example"
    return Session(
        provider="demo", subject=subject, email=email, name=subject.title(), groups=("employees",),
        claims={"email": email, "email_verified": True, "name": subject.title(), "groups": ["employees"]},
        acr="urn:ztproxy:pwd", amr=("pwd",), mfa=False, auth_time=T0, created=T0 + 0.8257122,
        last_seen=T0 + 0.8257122, refreshed=T0 + 0.8257122, refresh_token=os.urandom(32).hex()[:43],
        idp_session=idp_session, risk=RiskState.at_sign_in(Seen("127.0.0.0/24", Browser("firefox", 128), None)))


class Redis:
    """The store under test and a way to ask the node holding a key."""

    def __init__(self, url: str, node_of: Callable[[str], RedisServer], *, standalone: bool) -> None:
        self.config = SessionsConfig(store=url, store_timeout=2.0, lifetime=12 * 3600, idle_timeout=3600)
        self.node_of = node_of
        self.standalone = standalone

    def command(self, key: str, *args: object) -> object:
        return self.node_of(key).command(*args)

    def memory(self, key: str) -> int:
        return int(self.command(key, "MEMORY", "USAGE", key) or 0)

    def encoding(self, key: str) -> str:
        found = self.command(key, "OBJECT", "ENCODING", key)
        return found.decode() if isinstance(found, bytes) else str(found)


@pytest.fixture(params=["redis", "cluster"])
async def redis(request: pytest.FixtureRequest, redis_factory: RedisFactory) -> AsyncIterator[Redis]:
    if request.param == "cluster":
        cluster: ClusterSetup = request.getfixturevalue("shared_redis_cluster")
        cluster.flush()
        yield Redis(cluster.url, cluster.master_of, standalone=False)
    else:
        server = redis_factory.start()
        yield Redis(server.url, lambda key: server, standalone=True)


@pytest.fixture
async def manager(redis: Redis) -> AsyncIterator[SessionManager]:
    store = open_store(redis.config)
    yield SessionManager(store, redis.config)
    await store.close()


def session_keys(ticket: Ticket, session: Session) -> list[str]:
    return [ticket.store_key, handle_index(ticket.public_id), idp_session_index("demo", session.idp_session or "")]


async def test_a_session_takes_at_most_a_kibibyte(redis: Redis, manager: SessionManager) -> None:
    # Three users with three sessions each, each session of its own IdP session (a sign-in per browser).
    users = ["alice", "bob", "carol"]
    started = [(ticket, session) for user in users for number in range(3)
               for session in [make_session(user, idp_session=f"op-session-{user}-{number}")]
               for ticket in [await manager.start(session, T0 + 1)]]
    shared = [index for user in users
              for index in (user_index("demo", user), email_index("demo", f"{user}@corp.example"))]
    own = [key for ticket, session in started for key in session_keys(ticket, session)]
    for index in shared + own[1::3] + own[2::3]:
        assert redis.encoding(index) == "listpack", index  # not a skiplist: members of 34 bytes
    total = sum(redis.memory(key) for key in shared + own)
    print(f"MEMORY USAGE: {total} bytes for {len(started)} sessions, {total / len(started):.0f} per session")
    assert total / len(started) <= KIB
    # The user's only session, with nothing to share (the worst case): a little more.
    ticket = await manager.start(make_session("dave"), T0 + 1)
    keys = [*session_keys(ticket, make_session("dave")), user_index("demo", "dave"),
            email_index("demo", "dave@corp.example")]
    alone = sum(redis.memory(key) for key in keys)
    print(f"a user's only session: {alone} bytes")
    assert alone <= 1.2 * KIB


async def test_ending_a_session_removes_its_index_entries(redis: Redis, manager: SessionManager) -> None:
    first = await manager.start(make_session(idp_session="op-1"), T0 + 1)
    second = await manager.start(make_session(idp_session="op-2"), T0 + 2)
    third = await manager.start(make_session(idp_session="op-3"), T0 + 3)
    user, email = user_index("demo", "carol"), email_index("demo", "carol@corp.example")

    def listed(index: str, ticket: Ticket) -> bool:
        return redis.command(index, "ZSCORE", index, ticket.store_key) is not None

    def exists(key: str) -> bool:
        return bool(redis.command(key, "EXISTS", key))

    await manager.end(first)  # a sign-out: this worker has the session, so it knows its indexes
    assert not exists(handle_index(first.public_id)) and exists(handle_index(second.public_id))
    assert await manager.end_matching("demo", idp_session="op-2") == 1  # a back-channel logout
    assert not exists(handle_index(second.public_id))
    assert await manager.end_handle(second.public_id) == 0
    if redis.standalone:
        # One Redis drops them from the shared indexes at once, and an index left empty with them.
        assert not listed(user, first) and not listed(email, first) and not listed(user, second)
        assert not exists(idp_session_index("demo", "op-1")) and not exists(idp_session_index("demo", "op-2"))
    # A cluster keeps them until their expiry has passed (a writer may be between its index and
    # its key); never listed as live either way.
    assert await manager.store.members(user) == [third.store_key] == await manager.store.members(email)


async def previous_release_session(manager: SessionManager, session: Session) -> Ticket:
    """A session as the release before ticket version 2 stored it: hex key, format 1, the same indexes."""
    ticket = Ticket(os.urandom(32), os.urandom(32), LEGACY_TICKET_VERSION)
    assert len(ticket.store_key) == 66
    await manager.store.put(ticket.store_key, seal(ticket, session.to_bytes(legacy=True)), 3600, indexes=[
        user_index("demo", session.subject), handle_index(ticket.public_id),
        idp_session_index("demo", session.idp_session or ""), email_index("demo", session.email or "")])
    return ticket


async def test_sessions_of_the_previous_release_open_refresh_and_end(redis: Redis, manager: SessionManager) -> None:
    carol = make_session()
    old = await previous_release_session(manager, carol)
    new = await manager.start(make_session(idp_session="op-2"), T0 + 1)
    other = SessionManager(manager.store, manager.config)  # another replica, with nothing cached
    assert await other.load(old, T0 + 2) == carol
    assert await other.load(new, T0 + 2) is not None
    # A refresh keeps the old session in format 1: a replica of the release before still reads it.
    assert await other.update(old, carol.replace(groups=("employees",)), T0 + 3)
    plain = unseal(old, await manager.store.get(old.store_key) or b"")
    assert plain is not None and orjson.loads(plain)["v"] == 1 and orjson.loads(plain)["groups"] == ["employees"]
    # Their user's index holds both kinds of keys; a revocation of the user finds both.
    assert set(await manager.store.members(user_index("demo", "carol"))) == {old.store_key, new.store_key}
    assert await manager.end_handle(old.public_id) == 1
    assert await other.load(old, T0 + 4) is None
    assert redis.command(handle_index(old.public_id), "EXISTS", handle_index(old.public_id)) == 0
    again = await previous_release_session(manager, make_session())
    assert await manager.end_matching("demo", email="carol@corp.example") == 2
    assert await other.load(again, T0 + 5) is None and await other.load(new, T0 + 5) is None

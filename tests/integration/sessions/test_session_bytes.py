"""What a session costs in a real Redis and a real Redis Cluster, and the sessions of the releases before.

Issue 19 asks for at most 1 KiB of Redis per session, by ``MEMORY USAGE``: a user's only
session included, whose keys it shares with no other session of its user (the sealed
session, its user's, email's and IdP session's indexes, its place in a handle bucket).
Redis keeps a sorted set of at most 128 members of at most 64 bytes as a listpack (a few
bytes a member); one longer member turns it into a skiplist of about a kilobyte, which is
why store keys are 34 characters. Sessions stored by the releases before (version 1
tickets: 66-character keys, format 1; version 2 tickets with the long index names and a
handle key each) open, refresh, list and end as they did.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable

import orjson
import pytest

from tests.support.redis import RedisFactory, RedisServer
from tests.support.redis_cluster import ClusterSetup
from tests.unit.sessions.test_revocation import tickets_in_one_bucket
from ztproxy.config.sessions import SessionsConfig
from ztproxy.risk import Browser, RiskState, Seen
from ztproxy.sessions.indexes import (
    email_index,
    handle_bucket,
    idp_session_index,
    legacy_email_index,
    legacy_handle_index,
    legacy_idp_session_index,
    legacy_user_index,
    user_index,
)
from ztproxy.sessions.manager import SessionManager
from ztproxy.sessions.model import Session
from ztproxy.sessions.sealing import LEGACY_TICKET_VERSION, TICKET_VERSION, Ticket, seal, unseal
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

    def __init__(self, url: str, node_of: Callable[[str], RedisServer], masters: Callable[[], list[RedisServer]], *,
                 standalone: bool) -> None:
        self.config = SessionsConfig(store=url, store_timeout=2.0, lifetime=12 * 3600, idle_timeout=3600)
        self.node_of = node_of
        self.masters = masters
        self.standalone = standalone

    def command(self, key: str, *args: object) -> object:
        return self.node_of(key).command(*args)

    def memory(self, key: str) -> int:
        return int(self.command(key, "MEMORY", "USAGE", key) or 0)

    def encoding(self, key: str) -> str:
        found = self.command(key, "OBJECT", "ENCODING", key)
        return found.decode() if isinstance(found, bytes) else str(found)

    def usage(self) -> dict[str, int]:
        """``MEMORY USAGE`` of every key on every master."""
        found: dict[str, int] = {}
        for master in self.masters():
            with master.client() as client:
                for key in client.scan_iter(count=1000):
                    found[key.decode()] = int(client.memory_usage(key) or 0)
        return found


@pytest.fixture(params=["redis", "cluster"])
async def redis(request: pytest.FixtureRequest, redis_factory: RedisFactory) -> AsyncIterator[Redis]:
    if request.param == "cluster":
        cluster: ClusterSetup = request.getfixturevalue("shared_redis_cluster")
        cluster.flush()
        yield Redis(cluster.url, cluster.master_of, cluster.masters, standalone=False)
    else:
        server = redis_factory.start()
        yield Redis(server.url, lambda key: server, lambda: [server], standalone=True)


@pytest.fixture
async def manager(redis: Redis) -> AsyncIterator[SessionManager]:
    store = open_store(redis.config)
    yield SessionManager(store, redis.config)
    await store.close()


async def test_a_session_takes_at_most_a_kibibyte(redis: Redis, manager: SessionManager) -> None:
    # Three users with three sessions each, each session of its own IdP session (a sign-in per browser).
    users = ["alice", "bob", "carol"]
    for user in users:
        for number in range(3):
            await manager.start(make_session(user, idp_session=f"op-session-{user}-{number}"), T0 + 1)
    before = redis.usage()
    indexes = [key for key in before if key.startswith("idx:")]
    # The short names alone (none of the release before's), and the handles in buckets.
    assert {key for key in indexes if not key.startswith("idx:h:")} == {
        index for user in users for index in (user_index("demo", user), email_index("demo", f"{user}@corp.example"),
                                              *(idp_session_index("demo", f"op-session-{user}-{n}") for n in range(3)))}
    for index in indexes:
        assert redis.encoding(index) == "listpack", index  # not a skiplist: members of 34 bytes
    total = sum(before.values())
    print(f"MEMORY USAGE: {total} bytes for 9 sessions, {total / 9:.0f} per session")
    assert total / 9 <= KIB
    # A user's only session, which shares no key with another session of its user (the worst
    # case): every key it created and what it added to the keys it shares with other users'
    # sessions (its handle bucket, if another session is in it already).
    dave = make_session("dave")
    ticket = await manager.start(dave, T0 + 1)
    after = redis.usage()
    added = {key: size - before.get(key, 0) for key, size in after.items() if size != before.get(key)}
    assert set(added) >= {ticket.store_key, user_index("demo", "dave"), email_index("demo", "dave@corp.example"),
                          idp_session_index("demo", dave.idp_session or "")}
    assert set(added) <= {ticket.store_key, user_index("demo", "dave"), email_index("demo", "dave@corp.example"),
                          idp_session_index("demo", dave.idp_session or ""), handle_bucket(ticket.public_id)}
    print(f"a user's only session: {sum(added.values())} bytes: {added}")
    assert sum(added.values()) <= KIB


async def test_a_handle_in_a_bucket_costs_less_than_a_key_of_its_own(
        redis: Redis, manager: SessionManager, monkeypatch: pytest.MonkeyPatch) -> None:
    # Two sessions whose handles share a bucket, as every session's does once a store holds
    # a few tens of thousands: the second adds a listpack entry, not a key.
    first, second = tickets_in_one_bucket(2)
    made = iter([first, second])
    monkeypatch.setattr(Ticket, "new", classmethod(lambda cls: next(made)))
    await manager.start(make_session("erin", idp_session="op-erin"), T0 + 1)
    bucket = handle_bucket(first.public_id)
    alone = redis.memory(bucket)
    before = redis.usage()
    await manager.start(make_session("frank", idp_session="op-frank"), T0 + 1)
    after = redis.usage()
    grown = after[bucket] - alone
    print(f"a handle: {alone} bytes alone in its bucket, {grown} more beside another; "
          f"a user's only session then: {sum(after.values()) - sum(before.values())} bytes")
    assert redis.encoding(bucket) == "listpack" and 0 < grown < alone
    assert sum(after.values()) - sum(before.values()) <= KIB - (alone - grown)
    assert await manager.end_handle(second.public_id) == 1
    assert await manager.store.members(bucket) == [first.store_key]


async def test_ending_a_session_removes_its_index_entries(redis: Redis, manager: SessionManager) -> None:
    first = await manager.start(make_session(idp_session="op-1"), T0 + 1)
    second = await manager.start(make_session(idp_session="op-2"), T0 + 2)
    third = await manager.start(make_session(idp_session="op-3"), T0 + 3)
    user, email = user_index("demo", "carol"), email_index("demo", "carol@corp.example")

    def listed(index: str, ticket: Ticket) -> bool:
        return redis.command(index, "ZSCORE", index, ticket.store_key) is not None

    def exists(key: str) -> bool:
        return bool(redis.command(key, "EXISTS", key))

    assert not any(exists(legacy_handle_index(ticket.public_id)) for ticket in (first, second, third))
    assert listed(handle_bucket(first.public_id), first)
    await manager.end(first)  # a sign-out: this worker has the session, so it knows its indexes
    assert await manager.end_matching("demo", idp_session="op-2") == 1  # a back-channel logout
    assert await manager.end_handle(second.public_id) == 0
    if redis.standalone:
        # One Redis drops them from the indexes at once, and an index left empty with them.
        assert not listed(user, first) and not listed(email, first) and not listed(user, second)
        assert not exists(idp_session_index("demo", "op-1")) and not exists(idp_session_index("demo", "op-2"))
        assert not listed(handle_bucket(first.public_id), first) and not listed(handle_bucket(second.public_id), second)
    # A cluster keeps them until their expiry has passed (a writer may be between its index and
    # its key); never listed as live either way.
    assert await manager.store.members(user) == [third.store_key] == await manager.store.members(email)
    assert first.store_key not in await manager.store.members(handle_bucket(first.public_id))
    assert await manager.end_handle(third.public_id) == 1


async def previous_release_session(manager: SessionManager, session: Session, version: int) -> Ticket:
    """A session as a release before stored it, under its index names (the long ones, a handle key each):
    version 2 tickets and format 2 (the release before the short names), or version 1 tickets (66-character
    keys) and format 1 (the release before that)."""
    ticket = Ticket(os.urandom(32), os.urandom(32), version)
    assert len(ticket.store_key) == (66 if version == LEGACY_TICKET_VERSION else 34)
    await manager.store.put(ticket.store_key, seal(ticket, session.to_bytes(legacy=ticket.legacy)), 3600, indexes=[
        legacy_user_index("demo", session.subject), legacy_handle_index(ticket.public_id),
        legacy_idp_session_index("demo", session.idp_session or ""),
        legacy_email_index("demo", session.email or "")])
    return ticket


async def test_legacy_indexes_list_new_sessions_where_the_release_before_looks(redis: Redis) -> None:
    """``sessions.legacy_indexes`` during a rolling upgrade: a replica of the release before, which
    reads only the long names, lists and ends the sessions upgraded replicas sign in."""
    config = redis.config.model_copy(update={"legacy_indexes": True})
    store = open_store(config)
    try:
        manager = SessionManager(store, config)
        session = make_session(idp_session="op-1")
        ticket = await manager.start(session, T0 + 1)
        long_names = [legacy_user_index("demo", "carol"), legacy_email_index("demo", "carol@corp.example"),
                      legacy_idp_session_index("demo", "op-1"), legacy_handle_index(ticket.public_id)]
        # The release before's lookups are `members` of these names, as this store answers them.
        for index in long_names:
            assert await store.members(index) == [ticket.store_key], index
        assert await manager.matching("demo", subject="carol") == {ticket.store_key}
        assert await manager.end_handle(ticket.public_id) == 1
        assert not redis.command(legacy_handle_index(ticket.public_id), "EXISTS", legacy_handle_index(ticket.public_id))
        for index in long_names:
            assert await store.members(index) == [], index
    finally:
        await store.close()


@pytest.mark.parametrize("version", [LEGACY_TICKET_VERSION, TICKET_VERSION])
async def test_sessions_of_the_releases_before_open_refresh_list_and_end(
        redis: Redis, manager: SessionManager, version: int) -> None:
    carol = make_session()
    old = await previous_release_session(manager, carol, version)
    new = await manager.start(make_session(idp_session="op-2"), T0 + 1)
    other = SessionManager(manager.store, manager.config)  # another replica, with nothing cached
    assert await other.load(old, T0 + 2) == carol
    assert await other.load(new, T0 + 2) is not None
    # A refresh keeps a version 1 session in format 1: a replica of that release still reads it.
    assert await other.update(old, carol.replace(groups=("employees",)), T0 + 3)
    plain = unseal(old, await manager.store.get(old.store_key) or b"")
    assert plain is not None and Session.from_bytes(plain) == carol
    assert (orjson.loads(plain)["v"] == 1) if old.legacy else (orjson.loads(plain)[0] == 2)
    # Listed with the new sessions of their user, under either name; found by email, by IdP
    # session (back-channel logout) and by handle, in the index of its own that release gave it.
    listed = await manager.sessions_of("demo", "carol")
    assert sorted(entry.handle for entry in listed) == sorted([old.public_id, new.public_id])
    assert await manager.matching("demo", email="carol@corp.example") == {old.store_key, new.store_key}
    assert await manager.matching("demo", idp_session=carol.idp_session) == {old.store_key}
    assert await manager.end_handle(old.public_id) == 1
    assert await other.load(old, T0 + 4) is None
    assert redis.command(legacy_handle_index(old.public_id), "EXISTS", legacy_handle_index(old.public_id)) == 0
    again = await previous_release_session(manager, make_session(), version)
    assert await manager.end_matching("demo", email="carol@corp.example") == 2
    assert await other.load(again, T0 + 5) is None and await other.load(new, T0 + 5) is None
    third = await previous_release_session(manager, make_session(idp_session="op-3"), version)
    assert await manager.end_matching("demo", idp_session="op-3") == 1  # a back-channel logout
    assert await other.load(third, T0 + 6) is None

"""The session life cycle over a real (memory) store: cache, lifetime, idle, rotation, ending."""

from __future__ import annotations

import asyncio
import gc
import os

import orjson
from structlog.testing import capture_logs

from ztproxy.config.sessions import SessionsConfig
from ztproxy.errors import SessionStoreUnavailable
from ztproxy.sessions.indexes import legacy_handle_index, legacy_user_index
from ztproxy.sessions.manager import SessionManager
from ztproxy.sessions.memory import MemoryStore
from ztproxy.sessions.model import Session
from ztproxy.sessions.sealing import LEGACY_TICKET_VERSION, Ticket, seal, unseal

T0 = 1_800_000_000.0


def make_session(**changes: object) -> Session:
    fields: dict[str, object] = dict(
        provider="corp", subject="alice", email="alice@corp.example", name="Alice", groups=("eng",),
        claims={"department": "r&d"}, acr="urn:pwd", amr=("pwd",), mfa=False, auth_time=T0, created=T0,
        last_seen=T0, refreshed=T0, refresh_token="rt", id_token="idt", idp_session="op-sid-1")
    fields.update(changes)
    return Session(**fields)  # type: ignore[arg-type]


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def manager(**config: object) -> tuple[SessionManager, Clock]:
    clock = Clock()
    settings = SessionsConfig(**config)  # type: ignore[arg-type]
    return SessionManager(MemoryStore(settings, clock=clock), settings), clock


def test_a_session_round_trips_through_bytes() -> None:
    session = make_session()
    again = Session.from_bytes(session.to_bytes())
    assert again == session
    assert again is not None and again.identity.groups == frozenset({"eng"})
    assert again.identity.auth_time is not None and again.identity.auth_time.timestamp() == T0


def test_junk_bytes_are_no_session() -> None:
    for junk in (b"", b"{}", b"[]", b"\xff", b'{"v": 1}', b'{"v": 99, "subject": "x"}', b"null"):
        assert Session.from_bytes(junk) is None


async def test_start_and_load() -> None:
    sessions, clock = manager()
    ticket = await sessions.start(make_session(), T0)
    assert await sessions.load(ticket, T0) == make_session()
    # Another worker (no cache) opens it from the store with the same cookie.
    other = SessionManager(sessions.store, sessions.config)
    assert await other.load(ticket, T0 + 0.5) == make_session()


async def test_the_store_holds_no_plaintext_and_no_id() -> None:
    sessions, _ = manager()
    ticket = await sessions.start(make_session(), T0)
    store = sessions.store
    assert isinstance(store, MemoryStore)
    raw = await store.get(ticket.store_key)
    assert raw is not None and b"alice" not in raw and ticket.session_id not in raw
    assert ticket.session_id.hex() not in ticket.store_key


async def test_a_cookie_with_the_right_id_but_another_key_opens_nothing_even_cached() -> None:
    sessions, _ = manager()
    ticket = await sessions.start(make_session(), T0)
    forged = Ticket(ticket.session_id, bytes(32))
    assert await sessions.load(forged, T0) is None  # served from the cache: key compared
    other = SessionManager(sessions.store, sessions.config)
    assert await other.load(forged, T0) is None  # read from the store: AES-GCM refuses


async def test_ending_is_seen_at_once_here_and_within_cache_ttl_elsewhere() -> None:
    sessions, _ = manager(cache_ttl=1.0)
    ticket = await sessions.start(make_session(), T0)
    elsewhere = SessionManager(sessions.store, sessions.config)
    assert await elsewhere.load(ticket, T0) is not None
    await sessions.end(ticket)
    assert await sessions.load(ticket, T0) is None
    assert await elsewhere.load(ticket, T0 + 0.5) is not None  # its copy, within cache_ttl
    assert await elsewhere.load(ticket, T0 + 1.0) is None


async def test_absolute_lifetime() -> None:
    sessions, clock = manager(lifetime=3600, idle_timeout=3600)
    ticket = await sessions.start(make_session(), T0)
    clock.now = T0 + 3599
    assert await sessions.load(ticket, clock.now) is not None
    clock.now = T0 + 3600
    assert await sessions.load(ticket, clock.now) is None


async def test_idle_timeout_and_use_extends_it() -> None:
    sessions, clock = manager(lifetime=86400, idle_timeout=600, cache_ttl=1)
    ticket = await sessions.start(make_session(), T0)
    for minute in range(1, 30):  # used every minute for half an hour: stays
        clock.now = T0 + minute * 60
        assert await sessions.load(ticket, clock.now) is not None
    clock.now += 601  # then idle for longer than the timeout
    assert await sessions.load(ticket, clock.now) is None


async def test_update_never_revives_an_ended_session() -> None:
    sessions, _ = manager()
    ticket = await sessions.start(make_session(), T0)
    await sessions.end(ticket)
    assert not await sessions.update(ticket, make_session(groups=("eng", "admin")), T0 + 1)
    assert await sessions.load(ticket, T0 + 1, fresh=True) is None


async def test_start_rotates_the_id_and_ends_the_replaced_session() -> None:
    sessions, _ = manager()
    first = await sessions.start(make_session(), T0)
    second = await sessions.start(make_session(mfa=True), T0 + 5, replacing=first)
    assert second.session_id != first.session_id
    assert await sessions.load(first, T0 + 5) is None
    loaded = await sessions.load(second, T0 + 5)
    assert loaded is not None and loaded.mfa


async def test_end_matching_by_idp_session_or_user() -> None:
    sessions, _ = manager()
    a1 = await sessions.start(make_session(idp_session="op-1"), T0)
    a2 = await sessions.start(make_session(idp_session="op-2"), T0)
    bob = await sessions.start(make_session(subject="bob", idp_session="op-3"), T0)
    assert await sessions.end_matching("corp", idp_session="op-1") == 1
    assert await sessions.load(a1, T0) is None
    assert await sessions.load(a2, T0) is not None
    assert await sessions.end_matching("corp", subject="alice") == 1
    assert await sessions.load(a2, T0) is None
    assert await sessions.load(bob, T0) is not None
    assert await sessions.end_matching("other-idp", subject="bob") == 0
    assert await sessions.load(bob, T0) is not None


def test_an_unknown_auth_time_stays_unknown() -> None:
    # The IdP did not say when the user authenticated: max_auth_age rules then ask again.
    session = make_session(auth_time=None)
    assert session.identity.auth_time is None
    again = Session.from_bytes(session.to_bytes())
    assert again is not None and again.auth_time is None


class CountingStore(MemoryStore):
    reads = 0

    async def get(self, key: str) -> bytes | None:
        self.reads += 1
        await asyncio.sleep(0.01)  # a store round trip, during which more requests arrive
        return await super().get(key)


async def test_concurrent_requests_of_one_session_share_one_store_read() -> None:
    clock = Clock()
    settings = SessionsConfig(cache_ttl=1.0)
    store = CountingStore(settings, clock=clock)
    writer = SessionManager(store, settings)
    ticket = await writer.start(make_session(), T0)
    reader = SessionManager(store, settings)  # another worker: nothing cached
    results = await asyncio.gather(*(reader.load(ticket, T0) for _ in range(20)))
    assert all(result == make_session() for result in results)
    assert store.reads == 1
    # A cookie with the same id but another key waits for that read, then is refused on its own.
    forged = Ticket(ticket.session_id, bytes(32))
    other = SessionManager(store, settings)
    loads = await asyncio.gather(other.load(ticket, T0), other.load(forged, T0))
    assert loads == [make_session(), None]


async def test_a_session_of_a_legacy_ticket_opens_and_keeps_its_format() -> None:
    # What a release before ticket version 2 stored: the hex store key, format 1, the same indexes.
    sessions, _ = manager()
    ticket = Ticket(os.urandom(32), os.urandom(32), LEGACY_TICKET_VERSION)
    await sessions.store.put(ticket.store_key, seal(ticket, make_session().to_bytes(legacy=True)), 600,
                             indexes=[legacy_user_index("corp", "alice"), legacy_handle_index(ticket.public_id)])
    other = SessionManager(sessions.store, sessions.config)
    assert await other.load(ticket, T0) == make_session()
    # An identity refresh writes format 1 back: replicas of that release read it still.
    assert await other.update(ticket, make_session(groups=("eng", "ops")), T0 + 1)
    raw = unseal(ticket, await sessions.store.get(ticket.store_key) or b"")
    assert raw is not None and orjson.loads(raw)["v"] == 1 and orjson.loads(raw)["groups"] == ["eng", "ops"]
    assert await sessions.end_matching("corp", subject="alice") == 1
    assert await other.load(ticket, T0 + 2) is None


async def test_a_session_in_an_unknown_format_signs_in_afresh_and_says_why() -> None:
    sessions, _ = manager()
    ticket = Ticket.new()
    await sessions.store.put(ticket.store_key, seal(ticket, b'{"v":3,"p":"corp"}'), 600)
    with capture_logs() as logs:
        assert await sessions.load(ticket, T0) is None
    assert [entry["event"] for entry in logs] == ["session_format_unknown"]
    assert logs[0]["session"] == ticket.public_id and logs[0]["log_level"] == "warning"
    # Left in place: it is no forgery, and the release that wrote it may still be serving it.
    assert await sessions.store.get(ticket.store_key) is not None
    with capture_logs() as logs:  # a cookie with another key is no news: nothing logged
        assert await sessions.load(Ticket(ticket.session_id, bytes(32)), T0) is None
    assert logs == []



class StoreLosingIndexes(MemoryStore):
    async def members(self, index: str) -> list[str]:
        raise SessionStoreUnavailable("gone")


async def test_an_index_that_cannot_be_read_after_an_ending_does_not_undo_it() -> None:
    settings = SessionsConfig()
    sessions = SessionManager(StoreLosingIndexes(settings), settings)
    ticket = await sessions.start(make_session(), T0)
    await sessions.end(ticket)  # the shared indexes are read again afterwards: that fails, quietly
    assert await sessions.store.get(ticket.store_key) is None
    assert await SessionManager(sessions.store, settings).load(ticket, T0) is None


async def test_a_failed_background_task_is_logged_once_without_a_traceback() -> None:
    sessions, _ = manager()
    seen: list[dict[str, object]] = []
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: seen.append(context))  # asyncio's "never retrieved"

    async def fails() -> None:
        raise SessionStoreUnavailable()

    try:
        with capture_logs() as logs:
            sessions.spawn(fails())
            for _ in range(10):  # let the task run and its callbacks fire
                await asyncio.sleep(0)
        gc.collect()  # an unretrieved exception would be reported as its task is collected
    finally:
        loop.set_exception_handler(previous)
    failed = [event for event in logs if event["event"] == "session_task_failed"]
    assert len(failed) == 1 and "SessionStoreUnavailable" in str(failed[0]["error"])
    assert "exc_info" not in failed[0]
    assert seen == []

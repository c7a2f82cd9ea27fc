"""Revocation through the manager on a real (memory) store: announce, follow, watch, handles, devices."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from tests.unit.test_session_manager import T0, Clock, make_session
from ztproxy.config.sessions import SessionsConfig
from ztproxy.sessions.indexes import device_index, handle_bucket
from ztproxy.sessions.manager import SessionManager
from ztproxy.sessions.memory import MemoryStore
from ztproxy.sessions.revocation import REVOCATION_CHANNEL, decode_keys, encode_keys
from ztproxy.sessions.sealing import Ticket, public_handle

LONG_CACHE = SessionsConfig(cache_ttl=3600)  # only an announcement can drop a cached copy


class Workers:
    """Several managers on one store, as workers and replicas are; each may follow announcements."""

    def __init__(self, config: SessionsConfig = LONG_CACHE) -> None:
        self.clock = Clock()
        self.store = MemoryStore(config, clock=self.clock)
        self.config = config
        self.tasks: list[asyncio.Task[None]] = []
        self.managers: list[SessionManager] = []

    async def start(self, *, following: bool = True) -> SessionManager:
        manager = SessionManager(self.store, self.config)
        self.managers.append(manager)
        if following:
            self.tasks.append(asyncio.create_task(manager.follow_revocations()))
            await eventually(lambda: manager.revocations.subscriptions == 1)
        return manager

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for manager in self.managers:
            await manager.close()


async def eventually(condition: Callable[[], bool], bound: float = 2.0) -> None:
    deadline = asyncio.get_running_loop().time() + bound
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


@pytest.fixture
async def workers() -> AsyncIterator[Workers]:
    world = Workers()
    yield world
    await world.close()


async def cached_everywhere(ticket: Ticket, *managers: SessionManager) -> None:
    for manager in managers:
        assert await manager.load(ticket, T0) is not None


async def test_an_ending_reaches_every_follower_at_once(workers: Workers) -> None:
    here, there, elsewhere = [await workers.start() for _ in range(3)]
    ticket = await here.start(make_session(), T0)
    await cached_everywhere(ticket, here, there, elsewhere)
    await here.end(ticket)
    # Without the announcement their copies would serve for the hour of cache_ttl.
    for manager in (here, there, elsewhere):
        assert await manager.load(ticket, T0 + 0.001) is None


async def test_a_worker_that_does_not_follow_keeps_its_copy_until_cache_ttl() -> None:
    world = Workers(SessionsConfig(cache_ttl=1))
    try:
        here = await world.start()
        deaf = await world.start(following=False)
        ticket = await here.start(make_session(), T0)
        await cached_everywhere(ticket, deaf)
        await here.end(ticket)
        assert await deaf.load(ticket, T0 + 0.5) is not None  # the store is re-read only after cache_ttl
        assert await deaf.load(ticket, T0 + 1.0) is None
    finally:
        await world.close()


async def test_every_resubscription_drops_the_whole_cache(workers: Workers) -> None:
    manager = await workers.start()
    ticket = await manager.start(make_session(), T0)
    await workers.store.delete(ticket.store_key)  # gone, and nobody announced it
    assert await manager.load(ticket, T0) is not None  # its copy
    manager.revocations._subscribed()  # what the store calls after a reconnect
    assert await manager.load(ticket, T0) is None


async def test_end_matching_and_handles_and_listing(workers: Workers) -> None:
    here, there = await workers.start(), await workers.start()
    first = await here.start(make_session(idp_session="op-1"), T0)
    second = await here.start(make_session(idp_session="op-2"), T0 + 10)
    bob = await here.start(make_session(subject="bob"), T0)
    listed = await here.sessions_of("corp", "alice")
    assert {entry.handle for entry in listed} == {first.public_id, second.public_id}
    assert all(entry.provider == "corp" and 0 < entry.expires_in <= 3600 for entry in listed)
    assert await here.sessions_of("other", "alice") == []

    await cached_everywhere(first, there)
    assert await here.end_handle(first.public_id) == 1
    assert await there.load(first, T0) is None
    assert await here.end_handle(first.public_id) == 0  # already gone
    assert await here.end_handle("0" * 16) == 0
    assert [entry.handle for entry in await there.sessions_of("corp", "alice")] == [second.public_id]

    await cached_everywhere(second, there)
    assert await here.end_matching("corp", subject="alice") == 1
    assert await there.load(second, T0) is None
    assert await there.load(bob, T0) is not None


def test_the_handle_is_the_public_id_and_derives_from_the_store_key_only() -> None:
    ticket = Ticket.new()
    assert public_handle(ticket.store_key) == ticket.public_id
    assert handle_bucket(ticket.public_id) == "idx:h:" + ticket.public_id[:3]
    assert ticket.public_id not in ticket.store_key


def tickets_in_one_bucket(count: int) -> list[Ticket]:
    """New tickets whose handles share one bucket (of 4,096: a few hundred tries)."""
    seen: dict[str, list[Ticket]] = {}
    while True:
        ticket = Ticket.new()
        group = seen.setdefault(handle_bucket(ticket.public_id), [])
        group.append(ticket)
        if len(group) == count:
            return group


async def test_a_handle_ends_its_session_alone_among_those_of_its_bucket(
        workers: Workers, monkeypatch: pytest.MonkeyPatch) -> None:
    here, there = await workers.start(), await workers.start()
    tickets = tickets_in_one_bucket(3)
    made = iter(tickets)
    monkeypatch.setattr(Ticket, "new", classmethod(lambda cls: next(made)))
    assert [await here.start(make_session(subject=user), T0) for user in ("alice", "bob", "carol")] == tickets
    bucket = handle_bucket(tickets[0].public_id)
    assert sorted(await workers.store.members(bucket)) == sorted(ticket.store_key for ticket in tickets)
    for ticket in tickets:
        await cached_everywhere(ticket, there)
    # Another handle of the same bucket names no session: nothing ends.
    unknown = next(handle for handle in (tickets[0].public_id[:3] + f"{n:013x}" for n in range(4))
                   if handle not in {ticket.public_id for ticket in tickets})
    assert await here.end_handle(unknown) == 0
    assert all([await there.load(ticket, T0) is not None for ticket in tickets])
    assert await here.end_handle(tickets[1].public_id) == 1
    assert await there.load(tickets[1], T0) is None
    assert await there.load(tickets[0], T0) is not None and await there.load(tickets[2], T0) is not None
    assert sorted(await workers.store.members(bucket)) == sorted([tickets[0].store_key, tickets[2].store_key])
    assert [entry.handle for entry in await there.sessions_of("corp", "bob")] == []


async def test_a_device_ends_the_sessions_served_from_it(workers: Workers) -> None:
    here, there = await workers.start(), await workers.start()
    laptop = [await here.start(make_session(), T0), await here.start(make_session(subject="bob"), T0)]
    phone = await here.start(make_session(), T0)
    for ticket in laptop:
        here.note_device(ticket.store_key, make_session(), "laptop-7", T0)
    there.note_device(phone.store_key, make_session(), "phone-1", T0)
    await eventually(lambda: not here._tasks and not there._tasks)
    await cached_everywhere(phone, there)
    for ticket in laptop:
        await cached_everywhere(ticket, there)

    assert await there.end_device("laptop-7") == 2
    for ticket in laptop:
        assert await there.load(ticket, T0) is None
        assert await here.load(ticket, T0) is None
    assert await here.load(phone, T0) is not None
    assert await here.end_device("laptop-7") == 0
    assert await workers.store.members(device_index("laptop-7")) == []
    assert await here.end_device("unknown") == 0


async def test_a_device_is_recorded_once_per_session_and_worker(workers: Workers) -> None:
    manager = await workers.start()
    ticket = await manager.start(make_session(), T0)
    writes: list[str] = []
    put = workers.store.put

    async def counting_put(key: str, *args: object, **kwargs: object) -> bool:
        writes.append(key)
        return await put(key, *args, **kwargs)  # type: ignore[arg-type]

    workers.store.put = counting_put  # type: ignore[method-assign]
    for _ in range(50):
        manager.note_device(ticket.store_key, make_session(), "laptop-7", T0)
    manager.note_device(ticket.store_key, make_session(), "dock-2", T0)
    await eventually(lambda: not manager._tasks)
    assert len(writes) == 2


async def test_a_session_past_its_lifetime_is_not_recorded(workers: Workers) -> None:
    manager = await workers.start()
    ticket = await manager.start(make_session(), T0)
    manager.note_device(ticket.store_key, make_session(), "laptop-7", T0 + workers.config.lifetime)
    await eventually(lambda: not manager._tasks)
    assert await workers.store.members(device_index("laptop-7")) == []


async def watched(manager: SessionManager, ticket: Ticket) -> tuple[asyncio.Event, Callable[[], None]]:
    ended = asyncio.Event()
    stop = manager.watch(ticket.store_key, ended.set)
    await eventually(lambda: not manager._tasks)  # the first look at the store is done
    return ended, stop


async def test_a_watched_session_ended_elsewhere_is_closed(workers: Workers) -> None:
    here, there = await workers.start(), await workers.start()
    ticket = await here.start(make_session(), T0)
    ended, _ = await watched(there, ticket)
    assert not ended.is_set()
    await here.end(ticket)
    await asyncio.wait_for(ended.wait(), 2)


async def test_a_watch_that_begins_after_the_ending_fires_at_once(workers: Workers) -> None:
    manager = await workers.start()
    ticket = await manager.start(make_session(), T0)
    await manager.end(ticket)
    ended, _ = await watched(manager, ticket)
    assert ended.is_set()


async def test_an_announcement_of_a_live_session_closes_nothing(workers: Workers) -> None:
    manager = await workers.start()
    ticket = await manager.start(make_session(), T0)
    ended, _ = await watched(manager, ticket)
    for message in encode_keys([ticket.store_key]):
        await workers.store.publish(REVOCATION_CHANNEL, message)  # forged: the session lives
    await eventually(lambda: not manager._tasks)
    assert not ended.is_set()
    assert await manager.load(ticket, T0) is not None  # re-read from the store, still there


async def test_a_session_gone_while_unsubscribed_is_closed_at_resubscription(workers: Workers) -> None:
    manager = await workers.start()
    ticket = await manager.start(make_session(), T0)
    ended, _ = await watched(manager, ticket)
    await workers.store.delete(ticket.store_key)  # nobody announced it
    manager.revocations._subscribed()
    await asyncio.wait_for(ended.wait(), 2)


async def test_a_stopped_watch_is_not_called(workers: Workers) -> None:
    manager = await workers.start()
    ticket = await manager.start(make_session(), T0)
    ended, stop = await watched(manager, ticket)
    stop()
    await manager.end(ticket)
    assert not ended.is_set()


def test_announcements_carry_store_keys_only() -> None:
    keys = [f"s:{n:064x}" for n in range(2500)]
    messages = encode_keys(keys + keys[:10])
    assert len(messages) == 3
    assert sorted(key for message in messages for key in decode_keys(message)) == sorted(keys)
    assert decode_keys(b"s:abc idx:user:x " + b"\xff" * 10 + b" s:" + b"A" * 64) == []
    assert decode_keys(b"") == []


class GatedStore(MemoryStore):
    """Reads wait at a gate when it is closed: a store read still in flight while things happen."""

    def __init__(self, config: SessionsConfig) -> None:
        super().__init__(config)
        self.gate = asyncio.Event()
        self.gate.set()
        self.waiting = asyncio.Event()

    async def get(self, key: str) -> bytes | None:
        value = await super().get(key)
        if not self.gate.is_set():
            self.waiting.set()
            await self.gate.wait()
        return value


async def test_a_read_overtaken_by_an_ending_is_not_kept() -> None:
    store = GatedStore(LONG_CACHE)
    here, there = SessionManager(store, LONG_CACHE), SessionManager(store, LONG_CACHE)
    following = asyncio.create_task(there.follow_revocations())
    try:
        ticket = await here.start(make_session(), T0)
        store.gate.clear()
        reading = asyncio.create_task(there.load(ticket, T0))
        await store.waiting.wait()  # the value is read; the reply has not been acted on yet
        store.gate.set()
        await here.end(ticket)  # deleted and announced before the reader resumes
        assert await reading is not None  # the read began before the ending: served once
        assert await there.load(ticket, T0) is None  # but not kept for the hour of cache_ttl
    finally:
        following.cancel()
        await asyncio.gather(following, return_exceptions=True)

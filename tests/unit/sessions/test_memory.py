"""The memory store's own promises: a size cap that evicts the soonest-to-expire, bounded pruning.

The behaviour every store shares is in tests/integration/sessions/test_store_contract.py.
"""

from __future__ import annotations

import pytest

from ztproxy.sessions.memory import PRUNE_PER_WRITE, MemoryStore


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


async def test_expiry_follows_the_clock(clock: Clock) -> None:
    store = MemoryStore(clock=clock)
    await store.put("s:a", b"x", 10)
    clock.now += 9.99
    assert await store.get("s:a") == b"x"
    clock.now += 0.01
    assert await store.get("s:a") is None
    assert len(store) == 0


async def test_a_full_store_evicts_the_entry_closest_to_expiry(clock: Clock) -> None:
    store = MemoryStore(max_entries=3, clock=clock)
    await store.put("s:session", b"1", 3600)
    await store.put("once:state", b"2", 60)
    await store.put("s:other", b"3", 7200)
    assert await store.put("s:new", b"4", 600) is True
    assert len(store) == 3
    assert await store.get("once:state") is None
    assert [await store.get(k) for k in ("s:session", "s:other", "s:new")] == [b"1", b"3", b"4"]


async def test_rewriting_a_key_in_a_full_store_evicts_nothing(clock: Clock) -> None:
    store = MemoryStore(max_entries=2, clock=clock)
    await store.put("s:a", b"1", 10)
    await store.put("s:b", b"2", 20)
    await store.put("s:a", b"1 again", 30)
    assert [await store.get("s:a"), await store.get("s:b")] == [b"1 again", b"2"]


async def test_a_full_store_drops_expired_entries_before_evicting_live_ones(clock: Clock) -> None:
    store = MemoryStore(max_entries=2, clock=clock)
    await store.put("s:short", b"1", 5)
    await store.put("s:long", b"2", 500)
    clock.now += 10
    await store.put("s:new", b"3", 50)
    assert [await store.get("s:long"), await store.get("s:new")] == [b"2", b"3"]


async def test_evicted_and_expired_keys_leave_their_indexes(clock: Clock) -> None:
    store = MemoryStore(max_entries=2, clock=clock)
    await store.put("s:a", b"1", 5, indexes=["idx:user:u"])
    await store.put("s:b", b"2", 50, indexes=["idx:user:u"])
    await store.put("s:c", b"3", 100)  # evicts s:a
    assert await store.members("idx:user:u") == ["s:b"]
    clock.now += 60
    await store.put("s:d", b"4", 100)  # prunes s:b
    assert store._indexes == {}


async def test_writes_prune_expired_entries_in_bounded_steps(clock: Clock) -> None:
    store = MemoryStore(clock=clock)
    for number in range(100):
        await store.put(f"s:{number}", b"x", 1)
    clock.now += 2
    await store.put("s:live", b"y", 100)
    assert len(store) == 100 + 1 - PRUNE_PER_WRITE
    for _ in range(10):
        await store.put("s:live", b"y", 100)
    assert len(store) == 1


async def test_rewriting_one_key_keeps_the_expiry_heap_bounded(clock: Clock) -> None:
    store = MemoryStore(clock=clock)
    for _ in range(5000):
        await store.put("s:hot", b"x", 60)
        await store.touch("s:hot", 60, indexes=())
    assert len(store._expiries) <= 2 * len(store) + 1024 + 1


async def test_close_forgets_everything(clock: Clock) -> None:
    store = MemoryStore(clock=clock)
    await store.put("s:a", b"1", 5, indexes=["idx:user:u"])
    await store.close()
    assert await store.get("s:a") is None
    assert await store.members("idx:user:u") == []


def test_max_entries_must_be_positive() -> None:
    with pytest.raises(ValueError):
        MemoryStore(max_entries=0)

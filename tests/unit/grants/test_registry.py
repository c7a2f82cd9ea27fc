"""The requests in a (memory) store and each worker's view of them: opened, ended, settled once.

Two registries on one store stand for two replicas; the view's clock is injected, so grants
end without waiting for them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from ztproxy.config.grants import GrantsConfig
from ztproxy.grants.model import ACTIVE, DENIED, ENDED, EXPIRED, PENDING, GrantRefused, GrantRequest, Person
from ztproxy.grants.registry import TABLE, GrantRegistry
from ztproxy.grants.view import GrantsView
from ztproxy.policy.criteria.grant import Grant
from ztproxy.sessions.memory import MemoryStore

TERMS = Grant(approver_groups=frozenset({"payroll-leads"}), max_duration=3600.0, reason_required=True,
              approvals=1, approval_mfa=True)
TWO = Grant(approver_groups=frozenset({"payroll-leads"}), max_duration=3600.0, reason_required=True,
            approvals=2, approval_mfa=True)
BOB = Person("demo", "bob", "bob@corp.example", frozenset({"payroll"}), mfa=True)
CAROL = Person("demo", "carol", "carol@corp.example", frozenset({"payroll-leads"}), mfa=True)
DAVE = Person("demo", "dave", "dave@corp.example", frozenset({"payroll-leads"}), mfa=True)
T0 = 1_700_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


Events = list[tuple[str, str]]


def registry(store: MemoryStore, events: Events, config: GrantsConfig | None = None, view: GrantsView | None = None,
             poll_every: float = 60.0) -> GrantRegistry:
    return GrantRegistry(store, config or GrantsConfig(),
                         notify=lambda event, request, now: events.append((event, request.id)), view=view,
                         poll_every=poll_every)


def terms_of(terms: Grant) -> Callable[[str], Grant | None]:
    return lambda route: terms if route == "payroll" else None


async def test_an_approval_opens_access_in_the_view_and_a_revocation_closes_it() -> None:
    store, events, clock = MemoryStore(), [], Clock()
    view = GrantsView(clock=clock)
    grants = registry(store, events, view=view)
    request = await grants.create(BOB, "payroll", TERMS, "close", 600.0, T0)
    assert not view.holds(BOB.key, "payroll", T0)
    await grants.approve(request.id, CAROL, terms_of(TERMS), "ok", T0 + 5)
    assert view.holds(BOB.key, "payroll", T0 + 6)
    assert not view.holds(BOB.key, "other", T0 + 6) and not view.holds(CAROL.key, "payroll", T0 + 6)
    assert view.active_for(BOB.key, T0 + 6) == [("payroll", T0 + 605)]
    clock.now = T0 + 6
    waiting = asyncio.create_task(view.until_ended(BOB.key, "payroll"))
    await asyncio.sleep(0)
    assert not waiting.done()
    await grants.revoke(request.id, DAVE, terms_of(TERMS), "done early", T0 + 7)
    await asyncio.wait_for(waiting, 5)
    assert not view.holds(BOB.key, "payroll", T0 + 8)
    assert [event for event, _ in events] == ["grant.requested", "grant.approved", "grant.started", "grant.ended"]


async def test_a_grant_ends_by_the_clock_and_is_settled_once_by_two_replicas() -> None:
    store, events, clock = MemoryStore(), [], Clock()
    views = [GrantsView(clock=clock), GrantsView(clock=clock)]
    first, second = registry(store, events, view=views[0]), registry(store, events, view=views[1])
    request = await first.create(BOB, "payroll", TERMS, "close", 600.0, T0)
    await first.approve(request.id, CAROL, terms_of(TERMS), "", T0)
    for replica, view in zip((first, second), views, strict=True):
        await replica.reload()
        assert view.holds(BOB.key, "payroll", T0 + 599)
        assert not view.holds(BOB.key, "payroll", T0 + 600)  # every replica, by its clock, no message needed
    waiting = asyncio.create_task(views[0].until_ended(BOB.key, "payroll"))
    await asyncio.sleep(0)
    clock.now = T0 + 600
    for replica in (first, second):  # both replicas see the end due and write it down
        assert replica.next_due() == 0
        await replica.settle_due()
    await asyncio.wait_for(waiting, 5)
    kept = await first.get(request.id, T0 + 601)
    assert kept is not None and kept.state == ENDED and kept.ended_by == "time"
    assert [event for event, _ in events].count("grant.ended") == 1


async def test_an_unanswered_request_expires_once() -> None:
    store, events, clock = MemoryStore(), [], Clock()
    grants = registry(store, events, GrantsConfig(request_ttl=60.0), view=GrantsView(clock=clock))
    request = await grants.create(BOB, "payroll", TERMS, "close", 600.0, T0)
    assert grants.next_due() == 60
    clock.now = T0 + 60
    await grants.settle_due()
    await grants.settle_due()
    kept = await grants.get(request.id, T0 + 61)
    assert kept is not None and kept.state == EXPIRED
    assert [event for event, _ in events] == ["grant.requested", "grant.expired"]
    with pytest.raises(GrantRefused) as caught:
        await grants.approve(request.id, CAROL, terms_of(TERMS), "", T0 + 61)
    assert caught.value.status == 409


async def test_pending_requests_per_user_are_bounded() -> None:
    grants = registry(MemoryStore(), [], GrantsConfig(max_pending_per_user=2))
    made = [await grants.create(BOB, "payroll", TERMS, "close", 60.0, T0) for _ in range(2)]
    with pytest.raises(GrantRefused) as caught:
        await grants.create(BOB, "payroll", TERMS, "close", 60.0, T0)
    assert (caught.value.status, caught.value.code) == (409, "too-many-pending")
    assert len([r for r in await grants.listed(T0) if r.state == PENDING]) == 2  # nothing else changed
    await grants.create(CAROL, "payroll", TERMS, "close", 60.0, T0)  # another user is not bounded by bob's
    await grants.cancel(made[0].id, BOB, T0 + 1)
    await grants.create(BOB, "payroll", TERMS, "close", 60.0, T0 + 2)


async def test_concurrent_approvals_all_count_and_a_concurrent_denial_never_also_lands() -> None:
    store = MemoryStore()
    replica_a, replica_b = registry(store, []), registry(store, [])
    request = await replica_a.create(BOB, "payroll", TWO, "close", 60.0, T0)
    await asyncio.gather(replica_a.approve(request.id, CAROL, terms_of(TWO), "", T0 + 1),
                         replica_b.approve(request.id, DAVE, terms_of(TWO), "", T0 + 1))
    kept = await replica_a.get(request.id, T0 + 2)
    assert kept is not None and kept.state == ACTIVE and {m.by for m in kept.approvals} == {CAROL.key, DAVE.key}

    other = await replica_a.create(BOB, "payroll", TERMS, "close", 60.0, T0)
    results = await asyncio.gather(replica_a.approve(other.id, CAROL, terms_of(TERMS), "", T0 + 1),
                                   replica_b.deny(other.id, DAVE, terms_of(TERMS), "", T0 + 1),
                                   return_exceptions=True)
    refused = [result for result in results if isinstance(result, GrantRefused)]
    assert len(refused) == 1 and refused[0].status == 409
    kept = await replica_a.get(other.id, T0 + 2)
    assert kept is not None and kept.state in (ACTIVE, DENIED)


async def test_a_view_hears_another_replicas_approval_at_once() -> None:
    store, clock = MemoryStore(), Clock()
    view = GrantsView(clock=clock)
    here = registry(store, [], view=view, poll_every=3600.0)  # only the announcement can be this quick
    there = registry(store, [])
    following = asyncio.create_task(here.follow())
    try:
        request = await there.create(BOB, "payroll", TERMS, "close", 600.0, T0)
        await there.approve(request.id, CAROL, terms_of(TERMS), "", T0)
        async with asyncio.timeout(10):
            while not view.holds(BOB.key, "payroll", T0 + 1):
                await asyncio.sleep(0.01)
    finally:
        following.cancel()
        await asyncio.gather(following, return_exceptions=True)


async def test_unreadable_entries_are_skipped() -> None:
    store = MemoryStore()
    grants = registry(store, [])
    await store.put_entry(TABLE, "junk", b"not json", None)
    made = await grants.create(BOB, "payroll", TERMS, "close", 60.0, T0)
    assert [r.id for r in await grants.listed(T0)] == [made.id]
    with pytest.raises(GrantRefused) as caught:
        await grants.approve("junk", CAROL, terms_of(TERMS), "", T0)
    assert caught.value.status == 404
    assert isinstance(await grants.get(made.id, T0), GrantRequest)


async def test_a_flood_of_requests_and_cancellations_is_bounded() -> None:
    grants = registry(MemoryStore(), [], GrantsConfig(max_pending_per_user=1))
    for _ in range(10):  # max_pending_per_user * KEPT_PER_PENDING, cancelled ones included
        made = await grants.create(BOB, "payroll", TERMS, "close", 60.0, T0)
        await grants.cancel(made.id, BOB, T0)
    with pytest.raises(GrantRefused) as caught:
        await grants.create(BOB, "payroll", TERMS, "close", 60.0, T0)
    assert (caught.value.status, caught.value.code) == (409, "too-many-requests")
    assert len(await grants.listed(T0)) == 10


async def test_the_follower_settles_what_time_has_decided_before_its_next_poll() -> None:
    store, events, clock = MemoryStore(), [], Clock()
    grants = registry(store, events, GrantsConfig(request_ttl=60.0), view=GrantsView(clock=clock), poll_every=3600.0)
    request = await grants.create(BOB, "payroll", TERMS, "close", 600.0, T0)
    clock.now = T0 + 60  # due now: a follower that waited for its poll would not see it for an hour
    following = asyncio.create_task(grants.follow())
    try:
        async with asyncio.timeout(10):
            while (kept := await grants.get(request.id, T0)) is None or kept.state != EXPIRED:
                await asyncio.sleep(0.01)
    finally:
        following.cancel()
        await asyncio.gather(following, return_exceptions=True)
    assert [event for event, _ in events] == ["grant.requested", "grant.expired"]
    assert grants.next_due() is None

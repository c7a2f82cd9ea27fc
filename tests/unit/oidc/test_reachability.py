"""The IdP reachability view: what a sign-in may rely on, and for how long (a clock of the test's own)."""

from __future__ import annotations

import asyncio

from ztproxy.oidc.reachability import CURRENT_FOR, IN_USE_FOR, Reachability, State


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Idp:
    """A check that answers while ``up``, counting how often it was asked."""

    def __init__(self, up: bool = True) -> None:
        self.up = up
        self.checks = 0

    async def check(self) -> bool:
        self.checks += 1
        await asyncio.sleep(0)
        return self.up


def view(idp: Idp, clock: Clock) -> Reachability:
    return Reachability(idp.check, clock=clock)


async def test_nothing_known_checks_once_before_the_sign_in() -> None:
    idp, clock = Idp(), Clock()
    reachability = view(idp, clock)
    assert reachability.state() is State.UNKNOWN
    assert await reachability.confirm()
    assert idp.checks == 1
    assert await reachability.confirm()  # current: no second check
    assert idp.checks == 1


async def test_a_down_idp_found_by_the_check_refuses_the_sign_in() -> None:
    idp, clock = Idp(up=False), Clock()
    reachability = view(idp, clock)
    assert not await reachability.confirm()
    assert reachability.state() is State.UNREACHABLE
    assert not reachability.last_known_reachable


async def test_a_failed_call_makes_the_next_sign_in_ask_again() -> None:
    idp, clock = Idp(up=False), Clock()
    reachability = view(idp, clock)
    reachability.answered()
    clock.now += 0.1
    reachability.failed()  # a token request that could not connect
    assert reachability.state() is State.UNREACHABLE
    assert not await reachability.confirm()
    assert idp.checks == 1
    idp.up = True  # back: the very next sign-in goes through
    clock.now += 0.1
    assert await reachability.confirm()
    assert idp.checks == 2


async def test_a_hanging_check_of_a_down_idp_holds_a_sign_in_briefly_then_refuses_it() -> None:
    release = asyncio.Event()

    async def hanging() -> bool:
        await release.wait()
        return False

    clock = Clock()
    reachability = Reachability(hanging, clock=clock)
    reachability.failed()
    assert not await reachability.confirm()  # after RECHECK_WAIT, not after the check
    release.set()
    await asyncio.sleep(0)


async def test_an_answer_after_a_failure_lets_sign_ins_through_again() -> None:
    idp, clock = Idp(), Clock()
    reachability = view(idp, clock)
    reachability.failed()
    clock.now += 0.1
    reachability.answered()
    assert await reachability.confirm()
    assert idp.checks == 0


async def test_an_answer_older_than_the_bound_is_not_relied_on() -> None:
    idp, clock = Idp(up=False), Clock()
    reachability = view(idp, clock)
    reachability.answered()
    clock.now += CURRENT_FOR + 0.01  # the IdP went down meanwhile and nobody asked it
    assert reachability.state() is State.UNKNOWN
    assert not await reachability.confirm()  # the check made first finds it down
    assert idp.checks == 1


async def test_concurrent_sign_ins_share_one_check() -> None:
    idp, clock = Idp(), Clock()
    reachability = view(idp, clock)
    results = await asyncio.gather(*(reachability.confirm() for _ in range(10)))
    assert results == [True] * 10
    assert idp.checks == 1


async def test_the_watch_checks_while_in_use_and_pauses_after() -> None:
    idp, clock = Idp(), Clock()
    reachability = view(idp, clock)
    watching = asyncio.create_task(reachability.watch(interval=0.001))
    try:
        await asyncio.sleep(0.05)
        assert idp.checks == 0  # never used: no checks
        reachability.use()
        for _ in range(100):
            await asyncio.sleep(0.005)
            if idp.checks >= 3:
                break
        assert idp.checks >= 3
        clock.now += IN_USE_FOR + 1  # no sign-in for a while: the checks stop
        await asyncio.sleep(0.05)
        paused_at = idp.checks
        await asyncio.sleep(0.05)
        assert idp.checks == paused_at
        idp.up = False
        reachability.use()  # a sign-in wakes it up: it finds the IdP down
        for _ in range(100):
            await asyncio.sleep(0.005)
            if reachability.state() is State.UNREACHABLE:
                break
        assert reachability.state() is State.UNREACHABLE
    finally:
        watching.cancel()
        await asyncio.gather(watching, return_exceptions=True)

"""The signals and the engine: what a request's context leads to, route by route."""

from __future__ import annotations

from ztproxy.config.risk import RiskConfig
from ztproxy.policy.model import Decision, Outcome
from ztproxy.policy.reasons import SESSION_AT_RISK
from ztproxy.policy.reasons import SESSION_LOCKED as LOCKED_REASON
from ztproxy.risk import Browser, RiskState, Seen, judge, judge_denial, level_of, route_rules
from ztproxy.risk.bursts import Bursts
from ztproxy.risk.enforce import enforce, explanation
from ztproxy.risk.engine import HIGH, LOCK, LOW, MEDIUM, RECENT, REVOKE, SESSION_LOCKED, STEP_UP

A, B, C = "127.0.1.0/24", "127.0.2.0/24", "127.0.3.0/24"
FIREFOX = Browser("firefox", 128)
CONFIG = RiskConfig()
PLAIN = route_rules(CONFIG, {}, needs_mfa=False)
MFA = route_rules(CONFIG, {}, needs_mfa=True)
T0 = 1_000_000.0


def start(network: str = A, device: str | None = None) -> RiskState:
    return RiskState.at_sign_in(Seen(network, FIREFOX, device))


def seen(network: str = A, browser: Browser = FIREFOX, device: str | None = None) -> Seen:
    return Seen(network, browser, device)


def test_the_same_prefix_and_browser_give_nothing_and_write_nothing() -> None:
    verdict = judge(start(), seen(), T0, PLAIN)
    assert (verdict.detected, verdict.action, verdict.changed, verdict.level) == ((), None, False, LOW)
    # A new major version of the same browser is no change either.
    assert judge(start(), seen(browser=Browser("firefox", 129)), T0, PLAIN).detected == ()


def test_a_move_is_logged_on_plain_routes_and_asks_for_a_step_up_where_mfa_is_needed() -> None:
    moved = judge(start(), seen(B), T0, PLAIN)
    assert [(n.signal, n.action) for n in moved.detected] == [("network-changed", "log")]
    assert moved.action is None and moved.changed and moved.level == MEDIUM
    assert (moved.state.network, moved.state.previous_network, moved.state.moved_at) == (B, A, T0)
    # Later requests from B are quiet on plain routes, and step up on MFA routes (the signal is recent).
    assert judge(moved.state, seen(B), T0 + 1, PLAIN).action is None
    later = judge(moved.state, seen(B), T0 + 1, MFA)
    assert (later.action, later.signal, later.changed) == (STEP_UP, "network-changed", False)
    assert judge(start(), seen(B), T0, MFA).action == STEP_UP


def test_the_owner_moving_between_two_networks_is_never_revoked() -> None:
    state, now = start(), T0
    for network in (B, A, C, A):  # each move long after the last one
        now += CONFIG.concurrent_window + 1
        verdict = judge(state, seen(network), now, PLAIN)
        assert [n.signal for n in verdict.detected] == ["network-changed"]
        assert verdict.action is None
        for step in range(1, 4):
            assert judge(verdict.state, seen(network), now + step, PLAIN).detected == ()
        state = verdict.state
    assert all(n.action == "log" for n in state.signals)


def test_interleaved_prefixes_within_the_window_are_concurrent_use() -> None:
    thief = judge(start(), seen(B), T0, PLAIN)  # the copied cookie's first request: a move, logged
    owner = judge(thief.state, seen(A), T0 + 7.5, PLAIN)  # the owner again: the detection point
    assert [(n.signal, n.action) for n in owner.detected] == [("concurrent-use", REVOKE)]
    assert (owner.action, owner.signal, owner.level) == (REVOKE, "concurrent-use", HIGH)
    assert [(d.signal, d.delay) for d in owner.delays] == [("concurrent-use", 7.5)]
    # Coming back after the window is a move, not concurrent use.
    assert [n.signal for n in judge(thief.state, seen(A), T0 + 61, PLAIN).detected] == ["network-changed"]


def test_another_browser_family_or_device_is_revoked() -> None:
    verdict = judge(start(), seen(browser=Browser("chrome", 126)), T0, PLAIN)
    assert (verdict.action, verdict.signal) == (REVOKE, "user-agent-changed")
    first = judge(start(), seen(device="dev-1"), T0, PLAIN)  # the first device: recorded, no signal
    assert first.detected == () and first.changed and first.state.device == "dev-1"
    for other in ("dev-2", None):
        assert judge(first.state, seen(device=other), T0, PLAIN).signal == "device-changed"


def test_route_overrides_and_a_lock_that_holds_everywhere() -> None:
    strict = route_rules(CONFIG, {"network-changed": "revoke"}, needs_mfa=False)
    assert judge(start(), seen(B), T0, strict).action == REVOKE
    locking = route_rules(CONFIG, {"user-agent-changed": "lock"}, needs_mfa=False)
    locked = judge(start(), seen(browser=Browser("chrome", 1)), T0, locking)
    assert locked.action == LOCK and locked.state.locked_until == T0 + CONFIG.denials.lock
    # Every route refuses the locked session until the lock ends.
    assert (judge(locked.state, seen(browser=Browser("chrome", 1)), T0 + 1, PLAIN).signal) == SESSION_LOCKED
    after = judge(locked.state, seen(browser=Browser("chrome", 1)), T0 + CONFIG.denials.lock + 1, PLAIN)
    assert after.action is None and after.level == HIGH
    assert level_of(after.state, T0 + RECENT + 1) == LOW


def test_a_denial_burst_locks_the_session() -> None:
    bursts = Bursts()
    counts = [bursts.add("s", T0 + n, CONFIG.denials.window, CONFIG.denials.count) for n in range(10)]
    assert counts == [False] * 9 + [True]
    assert not bursts.add("s", T0 + 100, CONFIG.denials.window, 3)
    spread = [bursts.add("t", T0 + 31 * n, 60, 3) for n in range(5)]  # never 3 within a minute
    assert not any(spread)
    verdict = judge_denial(start(), T0, PLAIN)
    assert (verdict.action, verdict.signal) == (LOCK, "denial-burst")


def test_enforce_turns_a_verdict_into_a_decision_with_words() -> None:
    allowed = Decision(Outcome.ALLOW, ("email_domains",), "allow[0]")
    revoked = judge(judge(start(), seen(B), T0, PLAIN).state, seen(A), T0 + 1, PLAIN)
    decision = enforce(revoked, allowed)
    assert (decision.outcome, decision.reasons) == (Outcome.DENY, (SESSION_AT_RISK,))
    assert "used from another network at the same time" in (explanation(revoked, decision) or "")
    stepped = enforce(judge(start(), seen(B), T0, MFA), allowed)
    assert stepped.outcome is Outcome.STEP_UP and stepped.step_up is not None and stepped.step_up.mfa
    locked = enforce(judge_denial(start(), T0, PLAIN), allowed)
    assert locked.reasons == (LOCKED_REASON,)
    assert enforce(judge(start(), seen(), T0, PLAIN), allowed) is allowed

"""The risk engine: from a request's detections to one action, a new session state and a level.

:class:`RiskRules` are one route's actions per signal, resolved at config load (a route's
``risk`` overrides ``risk.rules``; ``step_up_if_mfa`` becomes ``step_up`` on routes that ask
for MFA, ``log`` elsewhere). :func:`judge` runs the signals of one request; the strongest
action wins (log < step_up < lock < revoke). A ``step_up`` also holds for signals the
session gave earlier: on a route that wants a step-up for a signal, a session that gave it
signs in again first. Pure: no I/O, ``now`` is a parameter.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import get_args

from ztproxy.config.risk import Action, RiskConfig, Signal
from ztproxy.policy.model import RoutePolicy
from ztproxy.risk.context import Noted, RiskState, Seen
from ztproxy.risk.signals import (
    CONCURRENT_USE,
    DENIAL_BURST,
    NETWORK_CHANGED,
    USER_AGENT_CHANGED,
    Detection,
    device_signal,
    network_signal,
    user_agent_signal,
)

LOG, STEP_UP, LOCK, REVOKE = "log", "step_up", "lock", "revoke"
_STRENGTH = {LOG: 0, STEP_UP: 1, LOCK: 2, REVOKE: 3}
RECENT = 3600.0  # how long a signal counts for the risk level
MAX_NOTED = 16  # signals a session keeps (the newest)
LOW, MEDIUM, HIGH = "low", "medium", "high"
LEVELS = (LOW, MEDIUM, HIGH)
SESSION_LOCKED = "session-locked"  # the signal-like name of a refusal for a lock still running


@dataclass(frozen=True, slots=True)
class RiskRules:
    actions: Mapping[str, str]  # signal -> log, step_up, lock or revoke
    concurrent_window: float
    lock: float  # how long a session lock lasts (``risk.denials.lock``)
    revoke_all_sessions: bool
    mfa: bool  # the route asks for MFA: a step-up asks for it too


def route_rules(config: RiskConfig, overrides: Mapping[Signal, Action], needs_mfa: bool) -> RiskRules:
    actions: dict[str, str] = {}
    for signal in get_args(Signal):
        action: str = overrides.get(signal) or config.action(signal)
        actions[signal] = (STEP_UP if needs_mfa else LOG) if action == "step_up_if_mfa" else action
    return RiskRules(MappingProxyType(actions), config.concurrent_window, config.denials.lock,
                     config.revoke_all_sessions, needs_mfa)


def needs_mfa(policy: RoutePolicy) -> bool:
    """Whether a route asks for MFA (``step_up_if_mfa`` steps up there)."""
    return any(rule.step_up is not None and rule.step_up.mfa for rule in policy.allow)


@dataclass(frozen=True, slots=True)
class Verdict:
    state: RiskState
    changed: bool  # the state must be written back (rare: a move, a first device, a signal)
    detected: tuple[Noted, ...]  # this request's signals, with their actions
    delays: tuple[Detection, ...]  # those with a detection delay (for the metric)
    action: str | None  # step_up, lock or revoke: what this request meets; None: nothing
    signal: str | None  # the signal behind ``action`` (SESSION_LOCKED for a running lock)
    level: str
    mfa: bool = False  # a step-up asks for MFA (the route does)

    def event_fields(self) -> dict[str, object]:
        """For the decision event: the level, this request's signals and the action it met."""
        fields: dict[str, object] = {"risk": self.level}
        if self.detected:
            fields["risk_signals"] = [f"{noted.signal}:{noted.action}" for noted in self.detected]
        if self.action is not None:
            fields["risk_signal"] = self.signal
            fields["risk_action"] = self.action
        return fields


def level_of(state: RiskState, now: float) -> str:
    """``high`` while a revoke or lock signal is recent, ``medium`` for a log or step_up one, else ``low``."""
    if state.locked_until is not None and now < state.locked_until:
        return HIGH
    recent = [noted for noted in state.signals if now - noted.at < RECENT]
    if any(noted.action in (REVOKE, LOCK) for noted in recent):
        return HIGH
    return MEDIUM if recent else LOW


def judge(state: RiskState, seen: Seen, now: float, rules: RiskRules, given: Iterable[str] = ()) -> Verdict:
    """The signals of one request, and what they lead to on this route.

    ``given``: signals to count as detected too (``ztproxy policy explain --signal``).
    """
    if (not given and not state.signals and state.locked_until is None and seen.network == state.network
            and seen.browser.family == state.browser.family
            and (seen.device == state.device if state.device_known else seen.device is None)):
        return Verdict(state, False, (), (), None, None, LOW, rules.mfa)  # the usual request: nothing new
    detections = [found for found in (network_signal(state, seen, now, rules.concurrent_window),
                                      user_agent_signal(state, seen), device_signal(state, seen))
                  if found is not None]
    detections += [Detection(signal) for signal in given if signal in rules.actions]
    moved = state
    for found in detections:
        if found.signal in (NETWORK_CHANGED, CONCURRENT_USE):
            moved = moved.changed(network=seen.network, previous_network=moved.network, moved_at=now)
        elif found.signal == USER_AGENT_CHANGED:
            moved = moved.changed(browser=seen.browser)
        else:
            moved = moved.changed(device=seen.device)
    if not moved.device_known and seen.device is not None:  # the session's first device: no signal
        moved = moved.changed(device=seen.device, device_known=True)
    return _apply(moved, detections, now, rules, changed=moved != state)


def judge_denial(state: RiskState, now: float, rules: RiskRules) -> Verdict:
    """A ``denial-burst`` for this session (its count-th 403 within the window)."""
    return _apply(state, [Detection(DENIAL_BURST)], now, rules, changed=False)


def _apply(state: RiskState, detections: Iterable[Detection], now: float, rules: RiskRules, *,
           changed: bool) -> Verdict:
    noted = tuple(Noted(found.signal, rules.actions[found.signal], now) for found in detections)
    action, signal = _strongest(noted)
    if noted:
        recent = tuple(entry for entry in state.signals if now - entry.at < RECENT)
        state = state.changed(signals=(*recent, *noted)[-MAX_NOTED:])
        changed = True
        if action == LOCK:
            state = state.changed(locked_until=now + rules.lock)
    if state.locked_until is not None and now < state.locked_until and action != REVOKE:
        action, signal = LOCK, signal if action == LOCK else SESSION_LOCKED
    elif action is None:
        # Earlier signals this route wants a step-up for (they were only logged where they came).
        earlier = [entry for entry in state.signals if now - entry.at < RECENT
                   and rules.actions.get(entry.signal) == STEP_UP]
        if earlier:
            action, signal = STEP_UP, earlier[-1].signal
    delays = tuple(found for found in detections if found.delay is not None)
    return Verdict(state, changed, noted, delays, action, signal, level_of(state, now), rules.mfa)


def _strongest(noted: tuple[Noted, ...]) -> tuple[str | None, str | None]:
    acting = [entry for entry in noted if entry.action != LOG]
    if not acting:
        return None, None
    strongest = max(acting, key=lambda entry: _STRENGTH[entry.action])
    return strongest.action, strongest.signal

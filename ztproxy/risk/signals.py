"""The signals: small pure functions of (the session's context, what the request shows, now).

Each returns a :class:`Detection` or None. They read the session's :class:`RiskState`
as the last request left it; :mod:`ztproxy.risk.engine` decides what each detection does
and how the state moves on. The two burst signals count events instead
(:mod:`ztproxy.risk.bursts`).
"""

from __future__ import annotations

from dataclasses import dataclass

from ztproxy.risk.context import RiskState, Seen

NETWORK_CHANGED = "network-changed"
CONCURRENT_USE = "concurrent-use"
USER_AGENT_CHANGED = "user-agent-changed"
DEVICE_CHANGED = "device-changed"
DENIAL_BURST = "denial-burst"
SIGN_IN_BURST = "sign-in-burst"
SIGNALS = (NETWORK_CHANGED, CONCURRENT_USE, USER_AGENT_CHANGED, DEVICE_CHANGED, DENIAL_BURST, SIGN_IN_BURST)


@dataclass(frozen=True, slots=True)
class Detection:
    signal: str
    delay: float | None = None  # seconds from the first suspicious request to this one, when known


def network_signal(state: RiskState, seen: Seen, now: float, window: float) -> Detection | None:
    """``network-changed`` when the request comes from another prefix than the last one;
    ``concurrent-use`` when it comes back to the previous one within ``window`` of the move
    (A, then B, then A again: what a copied cookie looks like). Same prefix: nothing."""
    if seen.network is None or state.network is None or seen.network == state.network:
        return None
    if seen.network == state.previous_network and state.moved_at is not None and now - state.moved_at <= window:
        # The detection point: measured from the first request from the other prefix.
        return Detection(CONCURRENT_USE, max(0.0, now - state.moved_at))
    return Detection(NETWORK_CHANGED)


def user_agent_signal(state: RiskState, seen: Seen) -> Detection | None:
    """Another browser family than the session's; a new major version of the same one is none."""
    return None if seen.browser.family == state.browser.family else Detection(USER_AGENT_CHANGED)


def device_signal(state: RiskState, seen: Seen) -> Detection | None:
    """Another device id than the session's, or none where there was one."""
    if not state.device_known or seen.device == state.device:
        return None
    return Detection(DEVICE_CHANGED)

"""What each signal means, in plain words: for the 403 page, the step-up challenge and /.ztproxy/me."""

from __future__ import annotations

from ztproxy.risk.engine import LOCK, REVOKE, SESSION_LOCKED, STEP_UP
from ztproxy.risk.signals import (
    CONCURRENT_USE,
    DENIAL_BURST,
    DEVICE_CHANGED,
    NETWORK_CHANGED,
    SIGN_IN_BURST,
    USER_AGENT_CHANGED,
)

WHAT_HAPPENED = {
    NETWORK_CHANGED: "this session moved to another network",
    CONCURRENT_USE: "this session was just used from another network at the same time",
    USER_AGENT_CHANGED: "this session was just used from another browser",
    DEVICE_CHANGED: "this session was just used from another device",
    DENIAL_BURST: "this session was refused access many times in a short while",
    SIGN_IN_BURST: "too many sign-ins were started from your address in a short while",
    SESSION_LOCKED: "this session is locked for a while after suspicious activity",
}
_CONSEQUENCE = {
    REVOKE: "so it has been ended everywhere to protect your account. Sign in again; if this was not you, "
            "tell your administrator.",
    LOCK: "so it is locked for a few minutes. Try again later, or contact your administrator.",
    STEP_UP: "so please sign in again to confirm it is you.",
}


def what_happened(signal: str) -> str:
    return WHAT_HAPPENED.get(signal, signal)


def sentence(signal: str, action: str) -> str:
    """One sentence for a refusal or a challenge: what happened and what it means."""
    text = what_happened(signal)
    if signal == SESSION_LOCKED:
        return text[0].upper() + text[1:] + ". Try again later, or contact your administrator."
    return f"{text[0].upper()}{text[1:]}, {_CONSEQUENCE.get(action, 'and it was noted.')}"

"""Session risk: which signals count, and what each one does (``risk:``, and ``routes[].risk``).

The signal names and actions are :mod:`ztproxy.risk`'s; this module only validates the
configuration. It imports no aiohttp.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ztproxy.config.values import Duration, Model

Signal = Literal["network-changed", "concurrent-use", "user-agent-changed", "device-changed",
                 "denial-burst", "sign-in-burst"]
# step_up_if_mfa: step_up on routes whose allow rules ask for MFA, log elsewhere.
Action = Literal["log", "step_up", "step_up_if_mfa", "revoke", "lock"]

DEFAULT_CONCURRENT_WINDOW = 60.0
DEFAULT_RULES: dict[Signal, Action] = {
    "network-changed": "step_up_if_mfa",
    "concurrent-use": "revoke",
    "user-agent-changed": "revoke",
    "device-changed": "revoke",
    "denial-burst": "lock",
    "sign-in-burst": "lock",
}
_SIGN_IN_ACTIONS = ("log", "lock")  # no session to step up or revoke when a sign-in starts


class Burst(Model):
    """``count`` events within ``window`` is a burst; a ``lock`` action then lasts ``lock``."""

    count: int = Field(ge=1)
    window: Duration = Field(gt=0)
    lock: Duration = Field(gt=0)


class RiskConfig(Model):
    enabled: bool = True
    concurrent_window: Duration = Field(default=DEFAULT_CONCURRENT_WINDOW, gt=0)
    denials: Burst = Burst(count=10, window=60.0, lock=300.0)
    sign_ins: Burst = Burst(count=30, window=60.0, lock=300.0)
    # pydantic copies mutable defaults; ruff sees Model as a pydantic model only in its own file.
    rules: dict[Signal, Action] = DEFAULT_RULES
    revoke_all_sessions: bool = False

    @model_validator(mode="after")
    def _check_rules(self) -> RiskConfig:
        check_rules(self.rules)
        return self

    def action(self, signal: Signal) -> Action:
        """The configured action for ``signal``: this section's rule, else the default."""
        return self.rules.get(signal, DEFAULT_RULES[signal])


def check_rules(rules: dict[Signal, Action]) -> None:
    action = rules.get("sign-in-burst")
    if action is not None and action not in _SIGN_IN_ACTIONS:
        raise ValueError(f"sign-in-burst: {action!r} is not possible before a session exists; use log or lock")

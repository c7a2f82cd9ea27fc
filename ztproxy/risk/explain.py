"""A session's context as ``ztproxy policy explain`` and ``policy test`` describe it, judged for one route.

A case says where the session signed in (``network``) and with what browser, what the request
shows (its client address and User-Agent), and which signals to count as given now. Pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ztproxy.config.risk import Action, RiskConfig, Signal
from ztproxy.policy.model import RoutePolicy
from ztproxy.risk.context import Browser, RiskState, Seen
from ztproxy.risk.engine import Verdict, judge, needs_mfa, route_rules


@dataclass(frozen=True, slots=True)
class SessionContext:
    network: str | None  # the session's network prefix (where it signed in)
    browser: Browser  # the session's browser
    seen: Seen  # what the request shows
    signals: tuple[str, ...] = ()  # given as detected now


def verdict_for(context: SessionContext, config: RiskConfig, overrides: Mapping[Signal, Action],
                policy: RoutePolicy, now: float) -> Verdict:
    state = RiskState(signed_in_from=context.network, browser=context.browser, network=context.network)
    return judge(state, context.seen, now, route_rules(config, overrides, needs_mfa(policy)), context.signals)

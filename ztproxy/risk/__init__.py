"""Session risk: notice a stolen cookie, a changed network or device, and probing; say what to do.

- :mod:`~ztproxy.risk.context`: prefixes and browser families, the state a session keeps;
- :mod:`~ztproxy.risk.signals`: one small pure function per signal;
- :mod:`~ztproxy.risk.engine`: the actions per route, :func:`judge`, the risk level;
- :mod:`~ztproxy.risk.bursts`: per-worker counts of denials;
- :mod:`~ztproxy.risk.words`: the signals in plain words.

Plain Python: no aiohttp, no I/O, ``now`` is a parameter. The stage that runs it is
:mod:`ztproxy.session_risk`; the service that acts (store writes, revocations, metrics) is
:mod:`ztproxy.risk_service`.
"""

from __future__ import annotations

from ztproxy.risk.context import Browser, Noted, RiskState, Seen, browser_of, network_of
from ztproxy.risk.engine import LEVELS, RiskRules, Verdict, judge, judge_denial, level_of, route_rules

__all__ = [
    "LEVELS",
    "Browser",
    "Noted",
    "RiskRules",
    "RiskState",
    "Seen",
    "Verdict",
    "browser_of",
    "judge",
    "judge_denial",
    "level_of",
    "network_of",
    "route_rules",
]

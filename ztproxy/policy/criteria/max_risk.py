"""``max_risk: low|medium``: the session's risk level (``ztproxy.risk``) is at most this."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ztproxy.policy.criteria.registry import register
from ztproxy.policy.model import RequestFacts
from ztproxy.policy.reasons import AUTHENTICATION_REQUIRED, RISK_TOO_HIGH

_RANK = {"low": 0, "medium": 1, "high": 2}


@dataclass(frozen=True, slots=True)
class MaxRisk:
    name: ClassVar[str] = "max_risk"
    level: str

    def __call__(self, facts: RequestFacts) -> str | None:
        if facts.identity is None:
            return AUTHENTICATION_REQUIRED
        return RISK_TOO_HIGH if _RANK.get(facts.risk, 2) > _RANK[self.level] else None


register(MaxRisk.name, MaxRisk,
         {RISK_TOO_HIGH: "Your session showed unusual activity recently (another network, browser or device); "
                         "sign out and sign in again from your usual device."})

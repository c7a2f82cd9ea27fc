"""``max_session_age``: the session started at most this long ago."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ztproxy.policy.criteria.registry import register
from ztproxy.policy.model import RequestFacts
from ztproxy.policy.reasons import AUTHENTICATION_REQUIRED, SESSION_TOO_OLD


@dataclass(frozen=True, slots=True)
class MaxSessionAge:
    name: ClassVar[str] = "max_session_age"
    seconds: float

    def __call__(self, facts: RequestFacts) -> str | None:
        identity = facts.identity
        if identity is None:
            return AUTHENTICATION_REQUIRED
        started = identity.session_started
        if started is None or (facts.now - started).total_seconds() > self.seconds:
            return SESSION_TOO_OLD
        return None


register(MaxSessionAge.name, MaxSessionAge,
         {SESSION_TOO_OLD: "Your session is too old for this application; please sign in again."})

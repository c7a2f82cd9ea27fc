"""``max_auth_age``: the user authenticated at the IdP at most this long ago."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ztproxy.policy.criteria.registry import register
from ztproxy.policy.model import RequestFacts
from ztproxy.policy.reasons import AUTH_TOO_OLD, AUTHENTICATION_REQUIRED


@dataclass(frozen=True, slots=True)
class MaxAuthAge:
    name: ClassVar[str] = "max_auth_age"
    seconds: float

    def __call__(self, facts: RequestFacts) -> str | None:
        identity = facts.identity
        if identity is None:
            return AUTHENTICATION_REQUIRED
        # Unknown auth_time counts as too old (OIDC Core 3.1.2.1: max_age then requires it).
        if identity.auth_time is None or (facts.now - identity.auth_time).total_seconds() > self.seconds:
            return AUTH_TOO_OLD
        return None


register(MaxAuthAge.name, MaxAuthAge,
         {AUTH_TOO_OLD: "This application requires a recent sign-in; please sign in again."})

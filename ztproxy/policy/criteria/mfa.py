"""``mfa: true``: the login used a second factor."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ztproxy.policy.criteria.registry import register
from ztproxy.policy.model import RequestFacts
from ztproxy.policy.reasons import AUTHENTICATION_REQUIRED, MFA_REQUIRED


@dataclass(frozen=True, slots=True)
class Mfa:
    name: ClassVar[str] = "mfa"

    def __call__(self, facts: RequestFacts) -> str | None:
        identity = facts.identity
        if identity is None:
            return AUTHENTICATION_REQUIRED
        return None if identity.mfa else MFA_REQUIRED


register(Mfa.name, lambda _: Mfa(), {MFA_REQUIRED: "This application requires you to sign in with a second factor."})

"""``scopes``: the access token has every scope of ``all_of`` and one of ``any_of`` (exact names)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ztproxy.config.rules import ScopesRequirement
from ztproxy.policy.criteria.registry import register
from ztproxy.policy.model import RequestFacts
from ztproxy.policy.reasons import SCOPE_MISSING, SERVICE_REQUIRED


@dataclass(frozen=True, slots=True)
class Scopes:
    name: ClassVar[str] = "scopes"
    all_of: frozenset[str]
    any_of: frozenset[str]  # empty: no condition

    @classmethod
    def of(cls, scopes: ScopesRequirement) -> Scopes:
        return cls(frozenset(scopes.all_of), frozenset(scopes.any_of))

    def __call__(self, facts: RequestFacts) -> str | None:
        service = facts.service
        if service is None:
            return SERVICE_REQUIRED
        if not self.all_of <= service.scopes or (self.any_of and self.any_of.isdisjoint(service.scopes)):
            return SCOPE_MISSING
        return None

    @property
    def needed(self) -> str:
        """The scope a token needs, as RFC 6750 3.1 puts it in ``insufficient_scope``'s ``scope``."""
        return " ".join(sorted(self.all_of) + sorted(self.any_of)[:1])


register(Scopes.name, Scopes.of, {SCOPE_MISSING: "The access token lacks a scope this application requires."})

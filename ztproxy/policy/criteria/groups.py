"""``groups``: member of any of ``any_of`` and of all of ``all_of`` (names compared exactly)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ztproxy.config.rules import GroupsRequirement
from ztproxy.policy.criteria.registry import register
from ztproxy.policy.model import RequestFacts
from ztproxy.policy.reasons import AUTHENTICATION_REQUIRED, GROUP_MISSING


@dataclass(frozen=True, slots=True)
class Groups:
    name: ClassVar[str] = "groups"
    any_of: frozenset[str]  # empty: no condition
    all_of: frozenset[str]

    @classmethod
    def of(cls, groups: GroupsRequirement) -> Groups:
        return cls(frozenset(groups.any_of), frozenset(groups.all_of))

    def __call__(self, facts: RequestFacts) -> str | None:
        identity = facts.identity
        if identity is None:
            return AUTHENTICATION_REQUIRED
        groups = identity.groups
        if self.any_of and self.any_of.isdisjoint(groups):
            return GROUP_MISSING
        if not self.all_of <= groups:
            return GROUP_MISSING
        return None


register(Groups.name, Groups.of, {GROUP_MISSING: "Your account is not in a group this application requires."})

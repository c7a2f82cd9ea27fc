"""The policy decision point: default deny, compiled at config load, evaluated without I/O.

A route allows a request when one of its ``allow`` rules holds; a rule holds when
every criterion in it holds. The only criterion so far is ``public: true`` (explicitly
unauthenticated); identity, device and request criteria join it in the policy language.
Every decision names its reasons for the audit log and the deny page.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ztproxy.config.schema import Rule


class Outcome(enum.Enum):
    ALLOW = "allow"
    DENY = "deny"


@dataclass(frozen=True, slots=True)
class Decision:
    outcome: Outcome
    reasons: tuple[str, ...]
    rule: str | None = None  # which rule allowed, e.g. "allow[0]" or "allow[1]:employees[0]"

    @property
    def allowed(self) -> bool:
        return self.outcome is Outcome.ALLOW


@dataclass(frozen=True, slots=True)
class CompiledRule:
    label: str
    public: bool

    @property
    def allows(self) -> Decision:
        return Decision(Outcome.ALLOW, ("public",), self.label)


@dataclass(frozen=True, slots=True)
class RoutePolicy:
    allow: tuple[CompiledRule, ...]
    # Known at compile time when the first rule needs no facts (public): no work per request.
    constant: Decision | None = None


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """What a decision may look at; gathered before evaluation (no I/O during it)."""

    method: str
    path: str


def compile_route_policy(allow: Sequence[Rule], policies: Mapping[str, Sequence[Rule]]) -> RoutePolicy:
    """Resolve named policies into one flat list of rules (config validation guarantees names exist)."""
    compiled: list[CompiledRule] = []
    for index, rule in enumerate(allow):
        if rule.policy is not None:
            for inner_index, inner in enumerate(policies.get(rule.policy, ())):
                compiled.append(CompiledRule(f"allow[{index}]:{rule.policy}[{inner_index}]", inner.public))
        else:
            compiled.append(CompiledRule(f"allow[{index}]", rule.public))
    constant = compiled[0].allows if compiled and compiled[0].public else None
    return RoutePolicy(allow=tuple(compiled), constant=constant)


def evaluate(policy: RoutePolicy, facts: RequestFacts) -> Decision:
    """Pure and synchronous: the same policy and facts always give the same decision."""
    if policy.constant is not None:
        return policy.constant
    if not policy.allow:
        return Decision(Outcome.DENY, ("no-allow-rule",))
    for rule in policy.allow:
        if rule.public:
            return rule.allows
    # Every remaining rule needs an identity, and no identity source is configured yet.
    return Decision(Outcome.DENY, ("authentication-required",))

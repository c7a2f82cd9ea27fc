"""Compiling a route's rules at config load: policy references expanded, criteria built.

Evaluation then only calls small predicates: no parsing, no lookups by name per request.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator, Mapping, Sequence

from ztproxy.config.rules import Rule
from ztproxy.config.values import Model
from ztproxy.policy import criteria
from ztproxy.policy.criteria.registry import CRITERIA
from ztproxy.policy.model import CompiledRule, Criterion, Decision, Outcome, RoutePolicy, StepUp
from ztproxy.policy.reasons import DENIED_BY_RULE, NO_ALLOW_RULE

NO_ALLOW_RULE_DECISION = Decision(Outcome.DENY, (NO_ALLOW_RULE,))


def compile_route_policy(allow: Sequence[Rule], policies: Mapping[str, Sequence[Rule]],
                         deny: Sequence[Rule] = ()) -> RoutePolicy:
    """Resolve named policies into flat lists of rules and build their criteria.

    Config validation guarantees that policy names exist and that policies do not nest;
    a name that does not exist is still refused here, since skipping it would silently
    drop a deny rule.
    """
    allowing = tuple(_compile(label, rule, allows=True) for label, rule in _expand("allow", allow, policies))
    denying = tuple(_compile(label, rule, allows=False) for label, rule in _expand("deny", deny, policies))
    constant: Decision | None = None
    if not allowing:
        constant = NO_ALLOW_RULE_DECISION
    elif not denying and all(isinstance(criterion, criteria.Public) for criterion in allowing[0].criteria):
        constant = allowing[0].decision
    return RoutePolicy(allow=allowing, deny=denying, constant=constant)


def names_services(policy: RoutePolicy) -> bool:
    """Whether an allow rule is about a calling service: the route then accepts bearer tokens."""
    service_criteria = (criteria.Clients, criteria.Scopes, criteria.Services, criteria.SenderConstrained)
    return any(isinstance(criterion, service_criteria) for rule in policy.allow for criterion in rule.criteria)


def needed_scope(policy: RoutePolicy) -> str:
    """The scopes a token needs to pass the first allow rule asking for some (RFC 6750 3.1 ``scope``)."""
    for rule in policy.allow:
        for criterion in rule.criteria:
            if isinstance(criterion, criteria.Scopes):
                return criterion.needed
    return ""


def policy_hash(routes: Mapping[str, RoutePolicy]) -> str:
    """sha256 over a canonical JSON of every route's compiled rules, for the audit log.

    The same configuration gives the same hash in every process and across restarts.
    """
    canonical = {
        name: {kind: [[rule.label, rule.canonical] for rule in rules]
               for kind, rules in (("allow", policy.allow), ("deny", policy.deny))}
        for name, policy in routes.items()
    }
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _expand(kind: str, rules: Sequence[Rule], policies: Mapping[str, Sequence[Rule]]) -> Iterator[tuple[str, Rule]]:
    for index, rule in enumerate(rules):
        if rule.policy is None:
            yield f"{kind}[{index}]", rule
            continue
        if rule.policy not in policies:
            raise ValueError(f"{kind}[{index}]: unknown policy {rule.policy!r}")
        for inner_index, inner in enumerate(policies[rule.policy]):
            if inner.policy is not None:
                raise ValueError(f"policy {rule.policy!r} names policy {inner.policy!r}: policies cannot nest")
            yield f"{kind}[{index}]:{rule.policy}[{inner_index}]", inner


def _compile(label: str, rule: Rule, *, allows: bool) -> CompiledRule:
    built = tuple(criteria_of(rule))
    if allows:
        decision = Decision(Outcome.ALLOW, tuple(criterion.name for criterion in built), label)
    else:
        decision = Decision(Outcome.DENY, (DENIED_BY_RULE,), label)
    canonical = json.dumps(rule.model_dump(mode="json", exclude_defaults=True), sort_keys=True, separators=(",", ":"))
    return CompiledRule(label=label, criteria=built, canonical=canonical, step_up=_step_up(rule), decision=decision)


def _step_up(rule: Rule) -> StepUp | None:
    if not rule.mfa and rule.max_auth_age is None:
        return None
    return StepUp(mfa=rule.mfa, max_age=rule.max_auth_age)


def step_up_demand(step_up: StepUp) -> tuple[bool, float]:
    """Orders step-ups from the least demanding: no MFA before MFA, then the longest max_age."""
    max_age = step_up.max_age if step_up.max_age is not None else math.inf
    return step_up.mfa, -max_age


def criteria_of(section: Model, prefix: str = "") -> Iterator[Criterion]:
    """The criteria of one inline rule, in the order of the schema (so reasons are stable).

    Each field the rule gives builds the criterion registered under its name; a section of
    conditions with no criterion of its own (``device``) gives one criterion per condition.
    """
    for field, info in type(section).model_fields.items():
        value = getattr(section, field)
        if value == info.default:  # not given: a default asks for nothing
            continue
        name = prefix + field
        build = CRITERIA.get(name)
        if build is not None:
            yield build(value)
        elif isinstance(value, Model):
            yield from criteria_of(value, f"{name}.")
        else:  # a rule must never hold for want of a criterion
            raise ValueError(f"{name}: no criterion is registered for this field")

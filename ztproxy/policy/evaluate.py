"""Evaluating a compiled route policy against the facts of one request.

Default deny. A holding deny rule always wins (``denied-by-rule``). Otherwise the first
allow rule that holds allows. When none holds but some fail only for want of MFA or a
fresher login, the decision is STEP_UP with the least demanding such login. Otherwise
DENY with the reasons every allow rule failed for, deduplicated, in rule order.
"""

from __future__ import annotations

from ztproxy.policy.compile import NO_ALLOW_RULE_DECISION, step_up_demand
from ztproxy.policy.model import CompiledRule, Decision, Outcome, RequestFacts, RoutePolicy
from ztproxy.policy.reasons import STEP_UP_REASONS


def evaluate(policy: RoutePolicy, facts: RequestFacts) -> Decision:
    """Pure and synchronous: the same policy and facts always give the same decision."""
    if policy.constant is not None:
        return policy.constant
    for rule in policy.deny:
        if rule.holds(facts):
            return rule.decision
    if not policy.allow:
        return NO_ALLOW_RULE_DECISION
    failed: dict[str, None] = {}  # an ordered set
    best: tuple[tuple[bool, float], CompiledRule, tuple[str, ...]] | None = None
    for rule in policy.allow:
        reasons = tuple(dict.fromkeys(rule.failures(facts)))
        if not reasons:
            return rule.decision
        failed.update(dict.fromkeys(reasons))
        if rule.step_up is None or not STEP_UP_REASONS.issuperset(reasons):
            continue
        demand = step_up_demand(rule.step_up)
        if best is None or demand < best[0]:  # strictly: the first of equals is kept
            best = demand, rule, reasons
    if best is not None:
        _, rule, reasons = best
        return Decision(Outcome.STEP_UP, reasons, rule.label, rule.step_up)
    return Decision(Outcome.DENY, tuple(failed))

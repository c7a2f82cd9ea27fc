"""Default deny and the ``public`` criterion."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from tests.unit.policy.helpers import facts
from ztproxy.config.rules import Rule
from ztproxy.policy import Outcome, compile_route_policy, evaluate
from ztproxy.policy.reasons import DENIED_BY_RULE, NO_ALLOW_RULE, PUBLIC

FACTS = facts(identity=None, device=None)


def test_no_rules_means_deny() -> None:
    policy = compile_route_policy((), {})
    decision = evaluate(policy, FACTS)
    assert decision.outcome is Outcome.DENY
    assert decision.reasons == (NO_ALLOW_RULE,)
    assert policy.constant == decision


def test_public_rule_allows() -> None:
    decision = evaluate(compile_route_policy((Rule(public=True),), {}), FACTS)
    assert decision.allowed
    assert decision.reasons == (PUBLIC,)
    assert decision.rule == "allow[0]"


def test_public_first_rule_is_a_constant_decision() -> None:
    policy = compile_route_policy((Rule(public=True), Rule(groups=["x"])), {})
    assert policy.constant is not None and policy.constant.allowed


def test_public_with_request_criteria_or_a_deny_rule_is_not_constant() -> None:
    narrowed = compile_route_policy((Rule(public=True, methods=["GET"]),), {})
    assert narrowed.constant is None
    assert evaluate(narrowed, FACTS).allowed
    assert not evaluate(narrowed, facts(method="POST")).allowed
    guarded = compile_route_policy((Rule(public=True),), {}, deny=(Rule(source_cidrs=["192.0.2.0/24"]),))
    assert guarded.constant is None
    assert evaluate(guarded, FACTS).reasons == (DENIED_BY_RULE,)


def test_named_policy_is_resolved() -> None:
    policies = {"everyone": (Rule(public=True),)}
    decision = evaluate(compile_route_policy((Rule(policy="everyone"),), policies), FACTS)
    assert decision.allowed
    assert decision.rule == "allow[0]:everyone[0]"


def test_empty_named_policy_denies() -> None:
    decision = evaluate(compile_route_policy((Rule(policy="nobody"),), {"nobody": ()}), FACTS)
    assert not decision.allowed


def test_unknown_policy_is_refused_rather_than_skipped() -> None:
    with pytest.raises(ValueError, match="unknown policy 'blocked'"):
        compile_route_policy((Rule(public=True),), {}, deny=(Rule(policy="blocked"),))


def test_empty_rule_is_rejected_by_the_schema() -> None:
    with pytest.raises(ValidationError, match="at least one criterion"):
        Rule()
    with pytest.raises(ValidationError):
        Rule(public=False)

"""Default deny and the ``public`` criterion."""

from __future__ import annotations

from ztproxy.config.schema import Rule
from ztproxy.policy import Outcome, RequestFacts, compile_route_policy, evaluate

FACTS = RequestFacts(method="GET", path="/")


def test_no_rules_means_deny() -> None:
    decision = evaluate(compile_route_policy((), {}), FACTS)
    assert decision.outcome is Outcome.DENY
    assert decision.reasons == ("no-allow-rule",)


def test_public_rule_allows() -> None:
    decision = evaluate(compile_route_policy((Rule(public=True),), {}), FACTS)
    assert decision.allowed
    assert decision.reasons == ("public",)
    assert decision.rule == "allow[0]"


def test_named_policy_is_resolved() -> None:
    policies = {"everyone": (Rule(public=True),)}
    decision = evaluate(compile_route_policy((Rule(policy="everyone"),), policies), FACTS)
    assert decision.allowed
    assert decision.rule == "allow[0]:everyone[0]"


def test_empty_named_policy_denies() -> None:
    decision = evaluate(compile_route_policy((Rule(policy="nobody"),), {"nobody": ()}), FACTS)
    assert not decision.allowed


def test_empty_rule_is_rejected_by_the_schema() -> None:
    import pytest
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="at least one criterion"):
        Rule()
    with pytest.raises(ValidationError):
        Rule(public=False)

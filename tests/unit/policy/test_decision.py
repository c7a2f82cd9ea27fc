"""How rules combine: default deny, deny wins, step-up selection, reasons, policy hash."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import pytest

from tests.unit.policy.helpers import NOW, facts, user
from ztproxy.config.rules import Rule
from ztproxy.policy import (
    Decision,
    Identity,
    Outcome,
    RequestFacts,
    StepUp,
    compile_route_policy,
    evaluate,
    policy_hash,
)
from ztproxy.policy.reasons import (
    AUTH_TOO_OLD,
    AUTHENTICATION_REQUIRED,
    DENIED_BY_RULE,
    DEVICE_UNKNOWN,
    GROUP_MISSING,
    METHOD_NOT_ALLOWED,
    MFA_REQUIRED,
    SOURCE_NOT_ALLOWED,
)

SINGLE_FACTOR_OLD = facts(identity=user(mfa=False, auth_time=NOW - timedelta(hours=2)))


def decide(allow: Sequence[Any], request: RequestFacts, deny: Sequence[Any] = (),
           policies: dict[str, list[Any]] | None = None) -> Decision:
    def rules(entries: Sequence[Any]) -> tuple[Rule, ...]:
        return tuple(Rule.model_validate({"policy": e} if isinstance(e, str) else e) for e in entries)

    named = {name: rules(entries) for name, entries in (policies or {}).items()}
    return evaluate(compile_route_policy(rules(allow), named, rules(deny)), request)


def test_first_holding_allow_rule_decides() -> None:
    decision = decide([{"groups": ["admins"]}, {"groups": ["staff"], "mfa": True}], facts())
    assert decision == Decision(Outcome.ALLOW, ("groups", "mfa"), "allow[1]")


def test_deny_rule_wins() -> None:
    decision = decide([{"public": True}], facts(), deny=[{"source_cidrs": ["192.0.2.0/24"]}])
    assert decision == Decision(Outcome.DENY, (DENIED_BY_RULE,), "deny[0]")


def test_deny_rule_that_does_not_hold_changes_nothing() -> None:
    decision = decide([{"groups": ["staff"]}], facts(), deny=[{"groups": ["contractors"]}])
    assert decision.allowed


def test_deny_by_named_policy_is_labelled() -> None:
    decision = decide([{"public": True}], facts(), deny=["blocked"],
                      policies={"blocked": [{"methods": ["POST"]}, {"paths": ["/"]}]})
    assert (decision.outcome, decision.rule) == (Outcome.DENY, "deny[0]:blocked[1]")


def test_deny_wins_over_step_up() -> None:
    decision = decide([{"mfa": True}], SINGLE_FACTOR_OLD, deny=[{"methods": ["GET"]}])
    assert decision.reasons == (DENIED_BY_RULE,)


def test_step_up_when_only_mfa_is_missing() -> None:
    decision = decide([{"groups": ["staff"], "mfa": True}], SINGLE_FACTOR_OLD)
    assert decision == Decision(Outcome.STEP_UP, (MFA_REQUIRED,), "allow[0]", StepUp(mfa=True, max_age=None))


def test_step_up_when_login_is_too_old() -> None:
    decision = decide([{"mfa": True, "max_auth_age": "15m"}], SINGLE_FACTOR_OLD)
    assert decision.outcome is Outcome.STEP_UP
    assert decision.reasons == (MFA_REQUIRED, AUTH_TOO_OLD)
    assert decision.step_up == StepUp(mfa=True, max_age=900.0)


def test_no_step_up_when_another_criterion_fails_too() -> None:
    decision = decide([{"groups": ["admins"], "mfa": True}], SINGLE_FACTOR_OLD)
    assert decision == Decision(Outcome.DENY, (GROUP_MISSING, MFA_REQUIRED))


def test_no_step_up_without_identity() -> None:
    assert decide([{"mfa": True}], facts(identity=None)).reasons == (AUTHENTICATION_REQUIRED,)


def test_step_up_picks_the_least_demanding_rule() -> None:
    allow = [{"mfa": True, "max_auth_age": "5m"}, {"mfa": True, "max_auth_age": "1h"},
             {"max_auth_age": "10m"}, {"max_auth_age": "30m"}, {"groups": ["x"]}]
    decision = decide(allow, SINGLE_FACTOR_OLD)
    assert (decision.outcome, decision.rule) == (Outcome.STEP_UP, "allow[3]")
    assert decision.step_up == StepUp(mfa=False, max_age=1800.0)


def test_step_up_ties_keep_the_first_rule() -> None:
    decision = decide([{"mfa": True, "paths": ["/"]}, {"mfa": True}], SINGLE_FACTOR_OLD)
    assert decision.rule == "allow[0]"


def test_deny_reasons_are_deduplicated_in_rule_order() -> None:
    allow = [{"methods": ["POST"], "groups": ["admins"]}, {"groups": ["ops"]}, {"source_cidrs": ["10.0.0.0/8"]},
             {"device": {"managed": True, "min_score": 90}}]
    decision = decide(allow, facts(device=None))
    assert decision == Decision(Outcome.DENY, (GROUP_MISSING, METHOD_NOT_ALLOWED, SOURCE_NOT_ALLOWED, DEVICE_UNKNOWN))


def test_policy_reference_labels() -> None:
    decision = decide(["nobody", "employees"], facts(), policies={
        "nobody": [{"users": ["none"]}], "employees": [{"groups": ["x"]}, {"email_domains": ["corp.example"]}]})
    assert decision.rule == "allow[1]:employees[1]"


def test_facts_need_aware_datetimes() -> None:
    with pytest.raises(ValueError, match="now must be a timezone-aware"):
        facts(now=datetime(2024, 1, 1))
    with pytest.raises(ValueError, match="auth_time"):
        Identity(subject="x", auth_time=datetime(2024, 1, 1))


def test_policy_hash_is_stable_and_follows_the_rules() -> None:
    def route(*rules: Rule) -> dict[str, Any]:
        return {"app": compile_route_policy(rules, {})}

    first = policy_hash(route(Rule(groups=["a", "b"], mfa=True)))
    assert first == policy_hash(route(Rule.model_validate({"mfa": True, "groups": {"any_of": ["a", "b"]}})))
    assert len(first) == 64
    assert first != policy_hash(route(Rule(groups=["a"], mfa=True)))
    assert first != policy_hash({"other": compile_route_policy((Rule(groups=["a", "b"], mfa=True),), {})})

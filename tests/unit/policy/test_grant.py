"""``grant``: the rule holds only while the user holds a grant for the route, and never lifts its other criteria."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import ValidationError

from tests.unit.policy.helpers import decide, facts, reasons, user
from ztproxy.config.rules import Rule
from ztproxy.policy import Outcome, RequestFacts
from ztproxy.policy.reasons import AUTHENTICATION_REQUIRED, GRANT_REQUIRED, GROUP_MISSING, MFA_REQUIRED
from ztproxy.policy.refusal import explain_refusal
from ztproxy.policy.suite import case_from_mapping, run_cases

GRANT = {"approvers": {"groups": ["payroll-leads"]}, "max_duration": "4h"}


def test_holds_only_with_a_grant() -> None:
    rule = {"groups": ["staff"], "grant": GRANT}
    assert reasons(rule, facts()) == (GRANT_REQUIRED,)
    assert reasons(rule, facts(granted=True)) == ()


def test_a_grant_never_lifts_the_other_criteria() -> None:
    assert reasons({"groups": ["payroll"], "grant": GRANT}, facts(granted=True)) == (GROUP_MISSING,)
    # MFA missing with a grant held: a step-up, not access.
    decision = decide({"mfa": True, "grant": GRANT}, facts(identity=user(mfa=False), granted=True))
    assert decision.outcome is Outcome.STEP_UP and decision.reasons == (MFA_REQUIRED,)


def test_a_grant_never_lifts_a_deny_rule() -> None:
    from ztproxy.policy import compile_route_policy, evaluate

    policy = compile_route_policy((Rule.model_validate({"grant": GRANT}),), {},
                                  (Rule.model_validate({"source_cidrs": ["192.0.2.0/24"]}),))
    assert evaluate(policy, facts(granted=True)).reasons == ("denied-by-rule",)


def test_nobody_signed_in_needs_authentication_and_the_deny_page_says_what_to_do() -> None:
    assert reasons({"grant": GRANT}, facts(identity=None, granted=True)) == (AUTHENTICATION_REQUIRED,)
    assert "request access" in explain_refusal(decide({"grant": GRANT}, facts())).lower()


@pytest.mark.parametrize("bad", [
    {"max_duration": "4h"},                                        # no approvers
    {"approvers": {"groups": []}},                                  # nobody approves
    {"approvers": {"groups": ["a"]}, "max_duration": "0s"},
    {"approvers": {"groups": ["a"]}, "approvals": 0},
    {"approvers": {"groups": ["a"]}, "reason": "maybe"},
])
def test_bad_terms_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Rule.model_validate({"grant": bad})


def test_a_grant_is_about_a_person_never_public_or_a_service() -> None:
    with pytest.raises(ValidationError):
        Rule.model_validate({"public": True, "grant": GRANT})
    with pytest.raises(ValidationError):
        Rule.model_validate({"clients": ["billing"], "grant": GRANT})


def test_policy_test_takes_the_grants_of_the_identity() -> None:
    from ztproxy.config import load_text

    config = load_text("""
identity_providers: [{name: corp, issuer: https://idp.corp.example, client_id: z, client_secret: s}]
routes:
  - {name: payroll, path: /payroll, upstream: http://127.0.0.1:9,
     allow: [{email_domains: [corp.example], grant: {approvers: {groups: [payroll-leads]}}}]}
  - {name: wiki, upstream: http://127.0.0.1:9, allow: [{email_domains: [corp.example]}]}
""")
    now = datetime(2024, 5, 6, 10, 0, tzinfo=UTC)
    identity = {"sub": "bob", "email": "bob@corp.example"}
    cases = [
        case_from_mapping({"name": "with", "request": {"url": "https://x/payroll"},
                           "identity": {**identity, "grants": ["payroll"]}, "expect": {"decision": "allow"}}, now),
        case_from_mapping({"name": "elsewhere", "request": {"url": "https://x/payroll"},
                           "identity": {**identity, "grants": ["wiki"]},
                           "expect": {"decision": "deny", "reasons": [GRANT_REQUIRED]}}, now),
        case_from_mapping({"name": "without", "request": {"url": "https://x/payroll"}, "identity": identity,
                           "expect": {"decision": "deny", "reasons": [GRANT_REQUIRED]}}, now),
    ]
    report = run_cases(config, cases)
    assert report.failed == 0, report.lines
    assert isinstance(cases[0].facts, RequestFacts) and cases[0].grants == frozenset({"payroll"})


def test_policy_test_refuses_grants_that_are_not_route_names() -> None:
    from ztproxy.errors import ConfigError

    with pytest.raises(ConfigError, match="grants"):
        case_from_mapping({"name": "bad", "request": {"url": "https://x/"},
                           "identity": {"sub": "bob", "grants": "payroll"}}, datetime(2024, 5, 6, tzinfo=UTC))


def test_policy_explain_takes_grants(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ztproxy.cli import main

    config = tmp_path / "ztproxy.yaml"
    config.write_text("""
identity_providers: [{name: corp, issuer: https://idp.corp.example, client_id: z, client_secret: s}]
routes:
  - {name: payroll, upstream: http://127.0.0.1:9,
     allow: [{email_domains: [corp.example], grant: {approvers: {groups: [payroll-leads]}}}]}
""")
    where = ["policy", "explain", "-c", str(config), "--url", "https://x/report", "--email", "bob@corp.example"]
    assert main(where) == 0
    refused = capsys.readouterr().out
    assert "decision: deny" in refused and "grant: fails: grant-required" in refused
    assert main([*where, "--grant", "payroll"]) == 0
    allowed = capsys.readouterr().out
    assert "grant: held for payroll" in allowed and "decision: allow" in allowed

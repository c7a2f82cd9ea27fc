"""Properties of the combination: more deny rules or fewer allow rules never let more in."""

from __future__ import annotations

from datetime import timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.policy.helpers import LAPTOP, NOW, USER, device, facts, user
from ztproxy.config.rules import Rule
from ztproxy.policy import Outcome, RequestFacts, compile_route_policy, evaluate
from ztproxy.policy.reasons import AUTH_TOO_OLD, MFA_REQUIRED

RULES = [Rule.model_validate(rule) for rule in (
    {"public": True},
    {"public": True, "methods": ["GET"]},
    {"users": ["u-1"]},
    {"email_domains": ["corp.example"]},
    {"groups": ["staff"]},
    {"groups": {"all_of": ["staff", "eng"]}},
    {"claims": {"dept": "sales"}},
    {"mfa": True},
    {"mfa": True, "max_auth_age": "15m"},
    {"max_auth_age": "1h"},
    {"max_session_age": "8h"},
    {"device": {"managed": True, "min_os_version": {"macos": "14.2"}}},
    {"device": {"min_score": 50, "owner_is_user": True}},
    {"methods": ["POST"]},
    {"paths": ["/admin"]},
    {"source_cidrs": ["10.0.0.0/8"]},
    {"time_window": {"days": ["mon"], "start": "09:00", "end": "17:00"}},
)]

identities = st.one_of(st.none(), st.builds(
    user,
    email=st.sampled_from(["ada@corp.example", "eve@evilcorp.example", None]),
    groups=st.frozensets(st.sampled_from(["staff", "eng", "ops"])),
    mfa=st.booleans(),
    auth_time=st.one_of(st.none(), st.sampled_from([NOW - timedelta(minutes=m) for m in (1, 30, 120)])),
    claims=st.sampled_from([{}, {"dept": "sales"}, {"dept": ["eng"]}]),
))
devices = st.one_of(st.none(), st.builds(device, managed=st.booleans(), score=st.sampled_from([None, 10, 90]),
                                         os_version=st.sampled_from(["14.1", "14.10", "x"])))
requests = st.builds(
    facts,
    identity=identities,
    device=devices,
    method=st.sampled_from(["GET", "POST"]),
    path=st.sampled_from(["/", "/admin", "/admin/x", "/administrator"]),
    client_ip=st.sampled_from(["10.1.1.1", "192.0.2.1", "::ffff:10.0.0.1"]),
    now=st.sampled_from([NOW, NOW + timedelta(hours=9), NOW + timedelta(days=1)]),
)
rule_lists = st.lists(st.sampled_from(RULES), max_size=4)


def allowed(allow: list[Rule], deny: list[Rule], request: RequestFacts) -> bool:
    return evaluate(compile_route_policy(allow, {}, deny), request).outcome is Outcome.ALLOW


@settings(max_examples=300, deadline=None)
@given(rule_lists, rule_lists, st.sampled_from(RULES), requests)
def test_adding_a_deny_rule_never_allows(allow: list[Rule], deny: list[Rule], extra: Rule,
                                         request: RequestFacts) -> None:
    if not allowed(allow, deny, request):
        assert not allowed(allow, [*deny, extra], request)
        assert not allowed(allow, [extra, *deny], request)


@settings(max_examples=300, deadline=None)
@given(rule_lists.filter(bool), rule_lists, st.data(), requests)
def test_removing_an_allow_rule_never_allows(allow: list[Rule], deny: list[Rule], data: st.DataObject,
                                             request: RequestFacts) -> None:
    index = data.draw(st.integers(0, len(allow) - 1))
    if not allowed(allow, deny, request):
        assert not allowed(allow[:index] + allow[index + 1:], deny, request)


@settings(max_examples=200, deadline=None)
@given(rule_lists, rule_lists, requests)
def test_decisions_are_consistent(allow: list[Rule], deny: list[Rule], request: RequestFacts) -> None:
    decision = evaluate(compile_route_policy(allow, {}, deny), request)
    assert decision == evaluate(compile_route_policy(allow, {}, deny), request)  # deterministic
    assert decision.reasons
    assert (decision.step_up is not None) == (decision.outcome is Outcome.STEP_UP)
    if decision.outcome is Outcome.STEP_UP:
        assert request.identity is not None
        assert set(decision.reasons) <= {MFA_REQUIRED, AUTH_TOO_OLD}


def test_fixtures_are_sane() -> None:
    assert facts().identity is USER and facts().device is LAPTOP

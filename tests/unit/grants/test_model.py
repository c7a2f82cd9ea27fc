"""An access request's state machine: who may do what, and when time decides (the clock is a parameter)."""

from __future__ import annotations

import pytest

from ztproxy.grants.model import (
    ACTIVE,
    CANCELLED,
    DENIED,
    ENDED,
    EXPIRED,
    PENDING,
    GrantRefused,
    GrantRequest,
    Person,
    format_duration,
    new_request,
)
from ztproxy.policy.criteria.grant import Grant

TERMS = Grant(approver_groups=frozenset({"payroll-leads"}), max_duration=4 * 3600.0, reason_required=True,
              approvals=1, approval_mfa=True)
TWO = Grant(approver_groups=frozenset({"payroll-leads"}), max_duration=3600.0, reason_required=False, approvals=2,
            approval_mfa=False)
BOB = Person("demo", "bob", "bob@corp.example", frozenset({"employees", "payroll"}), mfa=True)
CAROL = Person("demo", "carol", "carol@corp.example", frozenset({"payroll-leads"}), mfa=True)
DAVE = Person("demo", "dave", "dave@corp.example", frozenset({"payroll-leads"}), mfa=True)
T0 = 1_000_000.0
DAY = 86400.0


def asked(terms: Grant = TERMS, duration: float = 1800.0, requester: Person = BOB) -> GrantRequest:
    return new_request(requester, "payroll", terms, "month-end close", duration, T0, DAY)


def refused(status: int, call: object, *args: object, **kwargs: object) -> GrantRefused:
    with pytest.raises(GrantRefused) as caught:
        call(*args, **kwargs)  # type: ignore[operator]
    assert caught.value.status == status, caught.value.message
    return caught.value


def test_the_whole_loop_with_time_running_from_the_approval() -> None:
    request = asked()
    assert request.state_at(T0) == PENDING
    approved = request.approve(CAROL, TERMS, T0 + 600, "ok for the close")
    assert approved.state == ACTIVE and approved.starts_at == T0 + 600 and approved.ends_at == T0 + 600 + 1800
    assert approved.active_at(T0 + 600 + 1799)
    assert approved.state_at(T0 + 600 + 1800) == ENDED
    settled = approved.settled(T0 + 5000)
    assert (settled.state, settled.ended_at, settled.ended_by) == (ENDED, T0 + 2400, "time")


def test_an_unanswered_request_expires_and_can_no_longer_be_decided() -> None:
    request = asked()
    assert request.state_at(T0 + DAY - 1) == PENDING
    assert request.state_at(T0 + DAY) == EXPIRED
    assert refused(409, request.approve, CAROL, TERMS, T0 + DAY).code == "not-pending"
    assert refused(409, request.cancel, BOB, T0 + DAY).code == "not-pending"


def test_nobody_decides_their_own_request() -> None:
    lead = Person("demo", "carol", "carol@corp.example", frozenset({"payroll-leads"}), mfa=True)
    request = asked(requester=lead)
    assert refused(403, request.approve, lead, TERMS, T0).code == "own-request"
    assert refused(403, request.deny, lead, TERMS, T0).code == "own-request"
    assert not request.may_decide(lead, TERMS)
    assert request.may_decide(DAVE, TERMS)


def test_only_approvers_with_a_second_factor_decide() -> None:
    request = asked()
    assert refused(403, request.approve, BOB.__class__("demo", "eve", None, frozenset({"employees"}), True),
                   TERMS, T0).code == "not-an-approver"
    no_mfa = Person("demo", "carol", None, frozenset({"payroll-leads"}), mfa=False)
    assert refused(403, request.approve, no_mfa, TERMS, T0).code == "approval-mfa-required"
    assert asked(TWO).approve(no_mfa, TWO, T0).state == PENDING  # approval_mfa: false


def test_n_approvals_from_n_different_approvers() -> None:
    request = asked(TWO)
    once = request.approve(CAROL, TWO, T0 + 1)
    assert once.state == PENDING and len(once.approvals) == 1
    assert refused(409, once.approve, CAROL, TWO, T0 + 2).code == "already-approved"
    twice = once.approve(DAVE, TWO, T0 + 3)
    assert twice.state == ACTIVE and twice.starts_at == T0 + 3
    assert refused(409, twice.approve, DAVE, TWO, T0 + 4).code == "not-pending"


def test_an_admin_approval_completes_whatever_n_is() -> None:
    approved = asked(TWO).approve(None, TWO, T0 + 5, "incident 42")
    assert approved.state == ACTIVE and [made.by for made in approved.approvals] == ["admin"]


def test_deny_cancel_and_revoke() -> None:
    denied = asked().deny(CAROL, TERMS, T0 + 1, "not this week")
    assert denied.state == DENIED and denied.denial is not None and denied.denial.comment == "not this week"
    assert refused(409, denied.approve, DAVE, TERMS, T0 + 2).code == "not-pending"
    assert refused(403, asked().cancel, CAROL, T0 + 1).code == "not-yours"
    assert asked().cancel(BOB, T0 + 1).state == CANCELLED
    active = asked().approve(CAROL, TERMS, T0 + 1)
    assert refused(403, active.revoke, BOB, TERMS, T0 + 2).code == "not-an-approver"
    ended = active.revoke(DAVE, TERMS, T0 + 2)
    assert (ended.state, ended.ended_by) == (ENDED, "dave@corp.example")
    assert refused(409, ended.revoke, None, TERMS, T0 + 3).code == "not-active"
    assert refused(409, asked().revoke, None, TERMS, T0).code == "not-active"


def test_a_route_that_lost_its_grant_rule_decides_nothing() -> None:
    assert refused(409, asked().approve, CAROL, None, T0).code == "no-grant-rule"


@pytest.mark.parametrize(("terms", "reason", "duration", "code"), [
    (None, "why", 60.0, "no-grant-rule"),
    (TERMS, "  ", 60.0, "reason-required"),
    (TERMS, "why", 4 * 3600.0 + 1, "duration-too-long"),
    (TERMS, "why", 0.0, "bad-duration"),
    (TERMS, "x" * 501, 60.0, "reason-too-long"),
    (TERMS, "line\nbreak", 60.0, "bad-reason"),
])
def test_bad_requests_are_400(terms: Grant | None, reason: str, duration: float, code: str) -> None:
    caught = refused(400, new_request, BOB, "payroll", terms, reason, duration, T0, DAY)
    assert caught.code == code


def test_a_reason_may_be_optional_and_the_longest_duration_is_allowed() -> None:
    assert new_request(BOB, "payroll", TWO, "", 3600.0, T0, DAY).reason == ""


def test_records_round_trip_and_garbage_is_ignored() -> None:
    request = asked(TWO).approve(CAROL, TWO, T0 + 1, "fine")
    assert GrantRequest.from_bytes(request.to_bytes()) == request
    for garbage in (b"", b"[]", b'{"id": 1}', b"\xff", request.to_bytes().replace(b'"pending"', b'"weird"')):
        assert GrantRequest.from_bytes(garbage) is None
    assert b"secret" not in request.to_bytes() and "ticket" not in request.to_bytes().decode()


def test_summary_and_durations() -> None:
    summary = asked().approve(CAROL, TERMS, T0 + 60, "ok").summary(T0 + 61)
    assert summary["state"] == ACTIVE and summary["ends_at"] == int(T0 + 60 + 1800)
    assert summary["approved_by"] == ["carol@corp.example"] and summary["comments"] == ["ok"]
    assert [format_duration(s) for s in (20, 1800, 5400, 86400, 0)] == ["20s", "30m", "1h30m", "1d", "0s"]

"""The fault report's judge (tests/support/faults.summarize): what counts as failed, refused, allowed.

bench/faults.py and the fault test trust its verdicts, so they are pinned here on samples
made by hand: a FAIL must mean a request the fault does not explain, and a PASS must not
hide one.
"""

from __future__ import annotations

from typing import Any

from tests.support.faults import FaultReport, Sample, summarize

NORMAL = {"signed-in": 200, "anonymous": 401, "revoked": 401}
FAULT_AT, RETURNED_AT = 100.0, 105.0


def store_refusal(sample: Sample) -> bool:
    return sample.status == 503 and sample.detail == "session-store-unavailable"


def judge(*samples: Sample, **options: Any) -> FaultReport:
    return summarize("store down", list(samples), normal=NORMAL, protected=("anonymous", "revoked"),
                     fault_at=FAULT_AT, returned_at=RETURNED_AT, refusal=store_refusal, hang_bound=2.0,
                     recovery_kind="signed-in", recovery_bound=5.0, **options)


def ok(kind: str, started: float) -> Sample:
    return Sample(kind, started, 0.01, NORMAL[kind], "authentication-required" if NORMAL[kind] == 401 else "")


def test_refusals_while_the_dependency_is_away_are_fail_closed_and_the_rest_pass() -> None:
    report = judge(ok("signed-in", 99.0), Sample("signed-in", 101.0, 0.01, 503, "session-store-unavailable"),
                   Sample("revoked", 104.99, 0.02, 503, "session-store-unavailable"), ok("signed-in", 105.1))
    assert (report.fail_closed, report.failed, report.wrongly_allowed) == (2, 0, 0)
    assert report.problems == []
    assert report.recovery_s is not None and abs(report.recovery_s - 0.11) < 1e-9


def test_a_refusal_after_the_return_is_a_failure_and_says_when_it_came() -> None:
    report = judge(Sample("signed-in", 101.0, 0.01, 503, "session-store-unavailable"),
                   Sample("signed-in", 105.5, 0.004, 503, "session-store-unavailable"), ok("signed-in", 106.0))
    assert report.failed == 1
    assert report.problems == ["1 failed"]
    assert "signed-in 503 session-store-unavailable sent +5.500s from the fault and +0.500s from its return, " \
           "answered in 0.004s" in report.breakdown


def test_an_allowed_revoked_session_is_wrongly_allowed_whenever_it_comes() -> None:
    report = judge(Sample("revoked", 99.0, 0.01, 200), Sample("signed-in", 101.0, 0.01, 503,
                                                              "session-store-unavailable"))
    assert report.wrongly_allowed == 1
    assert "1 wrongly allowed" in report.problems
    assert "revoked 200 sent -1.000s from the fault" in report.breakdown


def test_a_stale_copy_served_past_cache_ttl_is_wrongly_allowed() -> None:
    stale = (FAULT_AT + 1.1, RETURNED_AT - 0.5)
    report = judge(Sample("signed-in", 100.5, 0.01, 200), Sample("signed-in", 102.0, 0.01, 200),
                   Sample("signed-in", 103.0, 0.01, 503, "session-store-unavailable"), stale=stale)
    assert report.wrongly_allowed == 1  # the 200 at +2.0s; the one at +0.5s came from a copy still fresh


def test_an_explained_refusal_is_fail_closed_and_an_unexplained_one_is_not() -> None:
    ended = Sample("signed-in", 106.0, 0.01, 401, "authentication-required")
    fault = Sample("signed-in", 101.0, 0.01, 503, "session-store-unavailable")
    assert judge(fault, ended).failed == 1
    explained = judge(fault, ended, explained=lambda s: s.status == 401 and s.started >= RETURNED_AT)
    assert (explained.failed, explained.fail_closed) == (0, 2)
    # Explained refusals do not show the fault was met: only the fault's own refusals do.
    only_explained = judge(ended, explained=lambda s: s.status == 401)
    assert only_explained.checks["refused while down"] is False

"""The deny page's words for each reason of a refusal."""

from __future__ import annotations

from ztproxy.authorize import REASON_SENTENCES, explain
from ztproxy.policy import Decision, Outcome
from ztproxy.policy.reasons import DENY_REASONS


def test_every_reason_has_a_sentence() -> None:
    assert set(REASON_SENTENCES) == set(DENY_REASONS)


def test_sentences_follow_the_reasons_once_each() -> None:
    decision = Decision(Outcome.DENY, ("device-unknown", "group-missing", "device-unknown"))
    assert explain(decision) == (f"{REASON_SENTENCES['device-unknown']} {REASON_SENTENCES['group-missing']}")


def test_unknown_reasons_fall_back_to_a_plain_refusal() -> None:
    assert explain(Decision(Outcome.DENY, ("something-new",))) == "You are not allowed to use this application."


def test_step_up_sentences_are_left_out_when_a_new_sign_in_would_not_help() -> None:
    decision = Decision(Outcome.DENY, ("group-missing", "mfa-required", "auth-too-old"))
    assert explain(decision) == REASON_SENTENCES["group-missing"]
    assert "second factor" not in explain(Decision(Outcome.DENY, ("mfa-required", "device-unmanaged")))
    # Alone, they are what would change the answer.
    only = Decision(Outcome.DENY, ("mfa-required", "auth-too-old"))
    assert explain(only) == f"{REASON_SENTENCES['mfa-required']} {REASON_SENTENCES['auth-too-old']}"

"""The deny page's words for the reasons of a refusal."""

from __future__ import annotations

from ztproxy.policy import Decision, Outcome, explain_refusal
from ztproxy.policy.criteria.registry import SENTENCES
from ztproxy.policy.reasons import AUTH_TOO_OLD, DEVICE_UNKNOWN, DEVICE_UNMANAGED, GROUP_MISSING, MFA_REQUIRED


def test_sentences_follow_the_reasons_once_each() -> None:
    decision = Decision(Outcome.DENY, (DEVICE_UNKNOWN, GROUP_MISSING, DEVICE_UNKNOWN))
    assert explain_refusal(decision) == f"{SENTENCES[DEVICE_UNKNOWN]} {SENTENCES[GROUP_MISSING]}"


def test_unknown_reasons_fall_back_to_a_plain_refusal() -> None:
    assert explain_refusal(Decision(Outcome.DENY, ("something-new",))) == "You are not allowed to use this application."


def test_step_up_sentences_are_left_out_when_a_new_sign_in_would_not_help() -> None:
    decision = Decision(Outcome.DENY, (GROUP_MISSING, MFA_REQUIRED, AUTH_TOO_OLD))
    assert explain_refusal(decision) == SENTENCES[GROUP_MISSING]
    assert "second factor" not in explain_refusal(Decision(Outcome.DENY, (MFA_REQUIRED, DEVICE_UNMANAGED)))
    # Alone, they are what would change the answer.
    only = Decision(Outcome.DENY, (MFA_REQUIRED, AUTH_TOO_OLD))
    assert explain_refusal(only) == f"{SENTENCES[MFA_REQUIRED]} {SENTENCES[AUTH_TOO_OLD]}"

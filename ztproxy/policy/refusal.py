"""The deny page's words: the reasons of a refusal as plain sentences.

Each sentence is registered beside the criterion whose failure it explains
(:mod:`ztproxy.policy.criteria.registry`). They speak of this application and this
request only: never of other routes, rules or internal addresses.
"""

from __future__ import annotations

from ztproxy.policy.criteria.registry import SENTENCES
from ztproxy.policy.model import Decision
from ztproxy.policy.reasons import STEP_UP_REASONS

FALLBACK = "You are not allowed to use this application."


def explain_refusal(decision: Decision) -> str:
    """The reasons of a refusal as sentences, in order, each once.

    Only conditions that would change the answer are named: when something a new sign-in
    cannot fix failed (a group, the device), "sign in with a second factor" is noise.
    """
    reasons = decision.reasons
    if any(reason not in STEP_UP_REASONS for reason in reasons):
        reasons = tuple(reason for reason in reasons if reason not in STEP_UP_REASONS)
    sentences = dict.fromkeys(SENTENCES[reason] for reason in reasons if reason in SENTENCES)
    return " ".join(sentences) or FALLBACK

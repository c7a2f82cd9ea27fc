"""What a verdict does to the policy's decision: a lock or a revocation refuses, a step-up asks for a new sign-in.

Pure: the authorization stage calls :func:`enforce` with the policy's decision and the
request's verdict, and logs and enforces what it returns like any other decision.
"""

from __future__ import annotations

from ztproxy.policy.model import Decision, Outcome, StepUp
from ztproxy.policy.reasons import SESSION_AT_RISK, SESSION_LOCKED
from ztproxy.risk.engine import LOCK, REVOKE, STEP_UP, Verdict
from ztproxy.risk.words import sentence

RISK_RULE = "risk"  # the deciding rule of a decision the risk engine changed


def enforce(verdict: Verdict | None, decision: Decision) -> Decision:
    if verdict is None or verdict.action is None or verdict.signal is None:
        return decision
    if verdict.action == REVOKE:
        return Decision(Outcome.DENY, (SESSION_AT_RISK,), f"{RISK_RULE}:{verdict.signal}")
    if verdict.action == LOCK:
        return Decision(Outcome.DENY, (SESSION_LOCKED,), f"{RISK_RULE}:{verdict.signal}")
    if verdict.action == STEP_UP and decision.outcome is not Outcome.DENY:
        mfa = verdict.mfa or (decision.step_up is not None and decision.step_up.mfa)
        # max_age 0 with prompt=login: a new authentication, not the IdP's remembered one.
        return Decision(Outcome.STEP_UP, (SESSION_AT_RISK,), f"{RISK_RULE}:{verdict.signal}",
                        StepUp(mfa=mfa, max_age=0))
    return decision


def explanation(verdict: Verdict | None, decision: Decision) -> str | None:
    """The plain sentence for a decision :func:`enforce` made, else None."""
    if verdict is None or verdict.signal is None or decision.rule != f"{RISK_RULE}:{verdict.signal}":
        return None
    return sentence(verdict.signal, verdict.action or "")

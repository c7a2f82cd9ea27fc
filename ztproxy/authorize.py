"""Authorization stage: gather the facts, ask the pure policy engine, enforce its decision."""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web

from ztproxy.errors import AccessDenied
from ztproxy.policy import Decision, RequestFacts, evaluate
from ztproxy.policy import reasons as why
from ztproxy.state import CONTEXT, DECISION

# The deny page in plain words, one sentence per reason. They speak of this application and
# this request only: never of other routes, rules or internal addresses.
REASON_SENTENCES = {
    why.AUTHENTICATION_REQUIRED: "This application requires you to sign in, and sign-in is not available here.",
    why.USER_NOT_ALLOWED: "Your account is not on the list of users of this application.",
    why.EMAIL_DOMAIN_NOT_ALLOWED: "Your email address is not in a domain this application accepts.",
    why.GROUP_MISSING: "Your account is not in a group this application requires.",
    why.CLAIM_MISMATCH: "Your account lacks an attribute this application requires.",
    why.MFA_REQUIRED: "This application requires you to sign in with a second factor.",
    why.AUTH_TOO_OLD: "This application requires a recent sign-in; please sign in again.",
    why.SESSION_TOO_OLD: "Your session is too old for this application; please sign in again.",
    why.DEVICE_UNKNOWN: "This application requires a known device, and yours could not be identified.",
    why.DEVICE_UNMANAGED: "This application requires a device managed by your organisation.",
    why.DISK_NOT_ENCRYPTED: "This application requires a device with disk encryption turned on.",
    why.PLATFORM_NOT_ALLOWED: "This application is not available from your device's operating system.",
    why.OS_TOO_OLD: "Your device's operating system is too old for this application; please update it.",
    why.POSTURE_STALE: "Your device has not reported its security status recently enough.",
    why.DEVICE_SCORE_TOO_LOW: "Your device does not meet this application's security requirements.",
    why.DEVICE_OWNER_MISMATCH: "This application must be used from a device registered to you.",
    why.METHOD_NOT_ALLOWED: "This kind of request is not allowed here.",
    why.PATH_NOT_ALLOWED: "This part of the application is not open to you.",
    why.SOURCE_NOT_ALLOWED: "This application cannot be reached from your network.",
    why.OUTSIDE_TIME_WINDOW: "This application is not available at this time.",
    why.NO_ALLOW_RULE: "This application has no access rule that admits anyone yet.",
    why.DENIED_BY_RULE: "Access to this application is blocked for this request.",
}
_FALLBACK = "You are not allowed to use this application."


def authorize(request: web.Request) -> None:
    ctx = request[CONTEXT]
    policy = ctx.route.policy
    # Routes whose decision is known at config load (public) skip building facts at all.
    decision = policy.constant or evaluate(policy, RequestFacts(
        method=request.method,
        path=ctx.target.path,
        client_ip=ctx.client_ip,
        now=datetime.now(UTC),
        identity=None,  # no login yet
        device=None,  # no posture providers yet
    ))
    request[DECISION] = decision
    # STEP_UP cannot happen without an identity; until login exists it is a denial.
    if not decision.allowed:
        raise AccessDenied(explain(decision), reasons=decision.reasons)


def explain(decision: Decision) -> str:
    """The reasons of a refusal as sentences, in order, each once."""
    sentences = dict.fromkeys(REASON_SENTENCES[reason] for reason in decision.reasons if reason in REASON_SENTENCES)
    return " ".join(sentences) or _FALLBACK

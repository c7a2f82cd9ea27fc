"""Authorization stage: gather the facts, ask the pure policy engine, enforce its decision."""

from __future__ import annotations

from aiohttp import web

from ztproxy.errors import AccessDenied
from ztproxy.policy import RequestFacts, evaluate
from ztproxy.state import CONTEXT, DECISION

_DENY_DETAIL = {
    "no-allow-rule": "This application has no access rule that admits anyone yet.",
    "authentication-required": "This application requires you to sign in, and sign-in is not available here.",
}


def authorize(request: web.Request) -> None:
    ctx = request[CONTEXT]
    policy = ctx.route.policy
    decision = policy.constant or evaluate(policy, RequestFacts(method=request.method, path=ctx.target.path))
    request[DECISION] = decision
    if not decision.allowed:
        detail = " ".join(_DENY_DETAIL.get(reason, "") for reason in decision.reasons).strip()
        raise AccessDenied(detail or "You are not allowed to use this application.", reasons=decision.reasons)
    return None

"""Authorization stage: gather the facts, ask the pure policy engine, enforce its decision."""

from __future__ import annotations

from dataclasses import replace

from aiohttp import web
from aiohttp.typedefs import Handler

from ztproxy.errors import AccessDenied
from ztproxy.policy import RequestFacts, evaluate
from ztproxy.state import CONTEXT

_DENY_DETAIL = {
    "no-allow-rule": "This application has no access rule that admits anyone yet.",
    "authentication-required": "This application requires you to sign in, and sign-in is not available here.",
}


@web.middleware
async def authorize(request: web.Request, handler: Handler) -> web.StreamResponse:
    ctx = request[CONTEXT]
    decision = evaluate(ctx.route.policy, RequestFacts(method=request.method, path=ctx.target.path))
    request[CONTEXT] = replace(ctx, decision=decision)
    if not decision.allowed:
        detail = " ".join(_DENY_DETAIL.get(reason, "") for reason in decision.reasons).strip()
        raise AccessDenied(detail or "You are not allowed to use this application.", reasons=decision.reasons)
    return await handler(request)

"""Authentication stage: who is asking. The session cookie -> a live, re-verified session;
on routes whose rules name services, a bearer token, else a workload certificate (X.509
SVID) -> the calling service.

Routes whose decision is known at load time (public) never look at cookies. A cookie
that opens no session (unknown, ended, expired, tampered, foreign) is the same as no
cookie: the request goes on anonymous and the policy decides what that means. A bearer
token is different: a request carrying one is judged on it alone (RFC 6750), never on a
session cookie beside it, and a token that is refused refuses the request (the
authorization stage says why). The session machinery is the shared sign-in service,
``ztproxy.auth``; the tokens' is ``ztproxy.bearer``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable

from aiohttp import web

from ztproxy.auth import AUTH, Auth, for_route, open_ticket
from ztproxy.bearer import BEARER, BearerTokens, TokenRejected, bearer_token, token_handle
from ztproxy.cookies import read_ticket
from ztproxy.sessions.sealing import Ticket
from ztproxy.state import RECORD, RequestRecord, ServiceCaller
from ztproxy.workloads.service import workload_caller


def authenticate(request: web.Request) -> Awaitable[None] | None:
    """Pipeline stage; awaitable only when the store or the IdP must be asked."""
    record = request[RECORD]
    ctx = record.context
    if not ctx.route.needs_identity:
        return None  # public (or closed) whatever the identity: no cookie, no store
    if ctx.route.accepts_tokens and (bearer := request.app[BEARER]) is not None:
        try:
            token = bearer_token(request.headers)
        except TokenRejected as refused:
            record.refused_credential = refused.reason
            return None
        if token is not None:
            now = time.time()
            service = bearer.cached(ctx.route, token, now)
            if service is None:
                return _authenticate_service(record, bearer, token, now)
            record.caller = ServiceCaller(service, token_handle(token))
            return None
    if ctx.route.accepts_tokens and (workload := workload_caller(request)) is not None:
        record.caller = workload  # no token: the SVID decides, never a session cookie beside it
        return None
    auth = request.app[AUTH]
    if auth is None:
        return None
    ticket = read_ticket(request, auth.cookies)
    if ticket is None:
        return None
    route_provider = ctx.route.config.identity_provider
    now = time.time()
    # The hot path: this worker's recent copy of the session, not yet due for a refresh.
    hit, session = auth.sessions.from_cache(ticket, now)
    if not hit or (session is not None and auth.refresher.due(session, now)):
        return _authenticate(record, auth, ticket, now, route_provider)
    if session is not None:
        record.caller = for_route(auth, ticket, session, route_provider)
    return None


async def _authenticate_service(record: RequestRecord, bearer: BearerTokens, token: str, now: float) -> None:
    try:
        service = await bearer.verify(record.context.route, token, now)
    except TokenRejected as refused:
        record.refused_credential = refused.reason
        return
    record.caller = ServiceCaller(service, token_handle(token))


async def _authenticate(record: RequestRecord, auth: Auth, ticket: Ticket, now: float,
                        route_provider: str | None) -> None:
    record.caller = await open_ticket(auth, ticket, now, route_provider)



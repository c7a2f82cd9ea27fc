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
from ztproxy.bearer import BEARER, BearerTokens, Evidence, Presented, TokenRejected, presented_token, token_handle
from ztproxy.cookies import read_ticket
from ztproxy.policy.model import Service
from ztproxy.posture.service import caller_certificate
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
            presented = presented_token(request.headers)
            if presented is not None:
                return _service(request, record, bearer, presented)
        except TokenRejected as refused:
            _refused(record, refused)
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


def _service(request: web.Request, record: RequestRecord, bearer: BearerTokens,
             presented: Presented) -> Awaitable[None] | None:
    """The calling service of a token verified before (no I/O unless a DPoP proof is to be
    remembered), else the awaitable verification."""
    now = time.time()
    verified = bearer.cached(record.context.route, presented.token, now)
    if verified is None:
        return _verify_service(request, record, bearer, presented, now)
    bound = bearer.bind(verified, presented, _evidence(request, record), now)
    if not isinstance(bound, Service):
        return _bound(record, presented, bound, verified.ends)
    record.caller = ServiceCaller(bound, token_handle(presented.token), verified.ends)
    return None


async def _verify_service(request: web.Request, record: RequestRecord, bearer: BearerTokens, presented: Presented,
                          now: float) -> None:
    try:
        verified = await bearer.verify(record.context.route, presented.token, now)
        bound = bearer.bind(verified, presented, _evidence(request, record), now)
        service = bound if isinstance(bound, Service) else await bound
    except TokenRejected as refused:
        _refused(record, refused)
        return
    record.caller = ServiceCaller(service, token_handle(presented.token), verified.ends)


async def _bound(record: RequestRecord, presented: Presented, bound: Awaitable[Service], ends: float) -> None:
    try:
        service = await bound
    except TokenRejected as refused:
        _refused(record, refused)
        return
    record.caller = ServiceCaller(service, token_handle(presented.token), ends)


def _refused(record: RequestRecord, refused: TokenRejected) -> None:
    record.refused_credential = refused.reason
    record.credential_challenge = refused.challenge


def _evidence(request: web.Request, record: RequestRecord) -> Evidence:
    """What the request shows of its sender: its method and URL as the client addressed them
    (a trusted proxy's X-Forwarded-Proto and -Host believed), its DPoP proof, its certificate."""
    ctx = record.context
    scheme, host = ctx.scheme, ctx.host_header
    if ctx.forwarded.peer_trusted:
        scheme = request.headers.get("X-Forwarded-Proto", scheme)
        host = request.headers.get("X-Forwarded-Host", host)
    proofs = request.headers.getall("DPoP", ())
    return Evidence(method=ctx.method, url=f"{scheme}://{host}{ctx.target.path}",
                    dpop=proofs[0] if len(proofs) == 1 else None, certificate=caller_certificate(request))


async def _authenticate(record: RequestRecord, auth: Auth, ticket: Ticket, now: float,
                        route_provider: str | None) -> None:
    record.caller = await open_ticket(auth, ticket, now, route_provider)



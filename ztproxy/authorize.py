"""Authorization stage: gather the facts, ask the pure policy engine, enforce its decision.

Enforcing means: let the request through; or send a browser to sign in (nobody signed in,
and only a signed-in user could pass) or to sign in again more strongly (step-up); or
answer an API client 401 with the RFC 6750/9470 challenge; or show the 403 page that
says, in plain words, what failed.

Forward-auth (``forward_auth``) changes only how a sign-in is asked for: the calling
proxy is told where the browser starts it (``X-Ztproxy-Sign-In``; nginx gets a 401 to
turn into that redirect), and ``/.ztproxy/denied`` explains a refusal already logged
without writing a second decision event.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Awaitable
from datetime import UTC, datetime

from aiohttp import web

from ztproxy import metrics
from ztproxy.auth import AUTH, Auth
from ztproxy.errors import AccessDenied, AuthenticationRequired, InsufficientScope, InvalidToken, StepUpRequired
from ztproxy.facts import request_facts
from ztproxy.forward_auth import SIGN_IN_HEADER, Kind, Question, sign_in_path, sign_in_url
from ztproxy.grants.model import person_key
from ztproxy.grants.pages import request_link
from ztproxy.grants.service import GRANTS
from ztproxy.headers import is_websocket_upgrade
from ztproxy.me import ME_PATH
from ztproxy.origins import addressed_origin, origin_allowed
from ztproxy.pages import wants_json
from ztproxy.policy import Decision, Outcome, RequestFacts, RoutePolicy, Service, StepUp, evaluate, explain_refusal
from ztproxy.policy import reasons as why
from ztproxy.policy.compile import needed_scope
from ztproxy.risk.enforce import enforce, explanation
from ztproxy.risk_service import RISK
from ztproxy.service_revocations import REVOKED_SERVICES
from ztproxy.state import POLICY_HASH, RECORD, Person, RequestRecord, ServiceCaller
from ztproxy.telemetry import decision_event


def utc_now() -> datetime:
    """The clock decisions are made by (sign-in age, session age, time windows)."""
    return datetime.now(UTC)


_ORIGIN_REFUSED = Decision(Outcome.DENY, (why.ORIGIN_NOT_ALLOWED,))
_PREFLIGHT = Decision(Outcome.ALLOW, (why.CORS_PREFLIGHT,))


def authorize(request: web.Request) -> Awaitable[web.StreamResponse] | None:
    """Pipeline stage: None lets the request through; a sign-in redirect is the one awaitable answer."""
    record = request[RECORD]
    ctx = record.context
    route = ctx.route
    if "Origin" in request.headers:  # only browsers send it: cross-site checks cost nothing otherwise
        if is_websocket_upgrade(request.headers):
            _refuse_foreign_origin(request, record)
        elif route.config.cors_allow_preflight and _is_preflight(request):
            _forward_preflight(request, record)
            return None
    policy = route.policy
    caller = record.caller
    identity = caller.identity if isinstance(caller, Person) else None
    service = caller.service if isinstance(caller, ServiceCaller) else None
    if record.refused_credential is not None:
        _refuse_token(request, record, record.refused_credential)
    if service is not None and (revoked := request.app[REVOKED_SERVICES]) is not None \
            and (refusal := revoked.refusal(service, time.time())) is not None:
        _refuse_token(request, record, refusal)  # a client, service or token revoked, before or after it was issued
    decision = policy.constant
    facts = None
    if decision is None or route.shadow is not None:
        granted = False
        if route.grant is not None and isinstance(caller, Person) and (grants := request.app[GRANTS]) is not None:
            granted = grants.view.holds(person_key(caller.session.provider, caller.subject), route.name, time.time())
        facts = request_facts(record, identity, record.device, service, utc_now(), granted=granted)
        # Routes whose decision is known at config load (public) skip building facts at all.
        # The session's risk may refuse it or ask for a new sign-in whatever the policy says.
        decision = enforce(record.risk, decision or evaluate(policy, facts))
        shadow = None if route.shadow is None else route.shadow.constant or evaluate(route.shadow, facts)
        if not _explaining(record):
            log_decision(request, record, decision, shadow)
    if _explaining(record):
        if decision.allowed:
            return None
    else:
        record.decision = decision
        if decision.allowed:
            return None
        _signals_refused(request, record, decision)
    if service is not None or (caller is None and why.SERVICE_REQUIRED in decision.reasons
                               and why.AUTHENTICATION_REQUIRED not in decision.reasons):
        _refuse_service(route.policy, decision, service)
    auth = request.app[AUTH]
    if auth is not None:
        if decision.outcome is Outcome.STEP_UP and decision.step_up is not None:
            step_up = decision.step_up
            if why.AUTH_TOO_OLD not in decision.reasons and why.SESSION_AT_RISK not in decision.reasons:
                # Only MFA is missing: a fresh password (prompt=login) would add nothing.
                step_up = StepUp(mfa=step_up.mfa, max_age=None)
            return _sign_in(request, record, auth, step_up)
        if identity is None and why.AUTHENTICATION_REQUIRED in decision.reasons:
            return _sign_in(request, record, auth, _first_sign_in(policy))
    if identity is None:
        raise AccessDenied(explain_refusal(decision), reasons=decision.reasons)
    words = explanation(record.risk, decision) or _denial_burst(request, record, decision)
    if words is not None:  # the session's risk: it may be ended or locked, so no "signed in as"
        raise AccessDenied(words, reasons=decision.reasons)
    signed_in_as = f"You are signed in as {identity.email or identity.subject}."
    if facts is not None and _grant_would_admit(request, policy, facts):
        raise AccessDenied(explain_refusal(decision), reasons=decision.reasons,
                           hint=f"{signed_in_as} An approver can grant you access to it for a while.",
                           link=(request_link(route.name), "Request access"))
    raise AccessDenied(explain_refusal(decision), reasons=decision.reasons,
                       hint=f"{signed_in_as} {AccessDenied.hint}",
                       link=(ME_PATH, "See your sign-in, your device and the applications open to you"))


def _grant_would_admit(request: web.Request, policy: RoutePolicy, facts: RequestFacts) -> bool:
    """Whether a grant for this route would let this user in (perhaps after a step-up): "Request access"."""
    route = request[RECORD].context.route
    if route.grant is None or facts.granted or request.app[GRANTS] is None:
        return False
    return evaluate(policy, dataclasses.replace(facts, granted=True)).outcome is not Outcome.DENY


def _signals_refused(request: web.Request, record: RequestRecord, decision: Decision) -> None:
    """Time the security signals' effects that refused this request (ztproxy_signal_enforcement_seconds)."""
    auth = request.app[AUTH]
    if auth is not None and auth.effects.active:
        caller = record.caller
        auth.effects.refused(caller.effects if isinstance(caller, Person) else (), record.device, decision.reasons,
                             time.time())


def _bearer_challenge(**params: str) -> tuple[tuple[str, str], ...]:
    """RFC 6750 3: the WWW-Authenticate of a refusal to a bearer-token caller."""
    fields = ['realm="ztproxy"', *(f'{name}="{value}"' for name, value in params.items())]
    return (("WWW-Authenticate", "Bearer " + ", ".join(fields)),)


def _refuse_token(request: web.Request, record: RequestRecord, reason: str) -> None:
    """401 invalid_token (RFC 6750 3.1) for a bearer token that is not acceptable here; logged."""
    decision = Decision(Outcome.DENY, (reason,))
    record.decision = decision
    if not _explaining(record):
        log_decision(request, record, decision, None)
    description = explain_refusal(decision)
    challenge = record.credential_challenge or _bearer_challenge(error="invalid_token", error_description=description)
    raise InvalidToken(description, headers=challenge)


def _refuse_service(policy: RoutePolicy, decision: Decision, service: Service | None) -> None:
    """A service refused (403; insufficient_scope names the scope), or no token where one is needed (401)."""
    if service is None:
        raise AuthenticationRequired("This application requires an access token.", headers=_bearer_challenge())
    if why.SENDER_CONSTRAINT_FAILED in decision.reasons:
        # The route asks for a sender-constrained token and got a plain bearer one: 401, as RFC 9449 7.1 has it.
        description = explain_refusal(decision)
        raise InvalidToken(description, headers=_bearer_challenge(error="invalid_token",
                                                                  error_description=description))
    if why.SCOPE_MISSING in decision.reasons:
        scope = needed_scope(policy)
        raise InsufficientScope(explain_refusal(decision), reasons=decision.reasons,
                                headers=_bearer_challenge(error="insufficient_scope", scope=scope))
    raise AccessDenied(explain_refusal(decision), reasons=decision.reasons)


def _denial_burst(request: web.Request, record: RequestRecord, decision: Decision) -> str | None:
    """Count a 403 for the session (``denial-burst``); the count-th one says what it led to."""
    risk = request.app[RISK]
    caller = record.caller
    if risk is None or not isinstance(caller, Person) or _explaining(record) or record.risk is None:
        return None
    verdict = risk.note_denial(caller.ticket, caller.session, record.risk.state, record.context.route.name,
                                  time.time())
    return explanation(verdict, enforce(verdict, decision)) if verdict is not None else None


def _explaining(record: RequestRecord) -> bool:
    """Whether this is ``/.ztproxy/denied`` re-telling a decision the auth endpoint logged already."""
    return record.question is not None and record.question.kind is Kind.DENIED


def _refuse_foreign_origin(request: web.Request, record: RequestRecord) -> None:
    """403 for a WebSocket upgrade from a page of another origin than the one addressed or listed.

    Browsers send cookies with an upgrade whatever page asks and apply no CORS to it: this is
    the only defence against cross-site WebSocket hijacking (RFC 6455 10.2: servers check Origin).
    """
    ctx = record.context
    headers = request.headers
    origins = headers.getall("Origin")
    scheme, host = ctx.scheme, ctx.host_header
    if ctx.forwarded.peer_trusted:  # the scheme and host the client used, as the trusted proxy saw them
        scheme = headers.get("X-Forwarded-Proto", scheme)
        host = headers.get("X-Forwarded-Host", host)
    if len(origins) == 1 and origin_allowed(origins[0], addressed_origin(scheme, host), ctx.route.websocket_origins):
        return
    record.decision = _ORIGIN_REFUSED
    log_decision(request, record, _ORIGIN_REFUSED, None, origin=origins[0][:256])
    raise AccessDenied(explain_refusal(_ORIGIN_REFUSED), reasons=_ORIGIN_REFUSED.reasons)


def _is_preflight(request: web.Request) -> bool:
    # Fetch standard, CORS-preflight request: OPTIONS with Origin and Access-Control-Request-Method.
    return request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers


def _forward_preflight(request: web.Request, record: RequestRecord) -> None:
    """Let a CORS preflight through without a session: browsers never send cookies with one.

    It reaches the app as an anonymous request: the assertion step adds no identity to a
    preflight, so the app never gets an identity the policy did not admit.
    """
    record.decision = _PREFLIGHT
    log_decision(request, record, _PREFLIGHT, None, preflight=True)


def log_decision(request: web.Request, record: RequestRecord, decision: Decision, shadow: Decision | None,
                 **extra: object) -> None:
    """The audit trail: who, from what device, on which route, what was decided and why."""
    ctx = record.context
    caller = record.caller
    service = caller.service if isinstance(caller, ServiceCaller) else None
    fields: dict[str, object] = {
        "request_id": ctx.request_id,
        "route": ctx.route.name,
        "caller": caller.kind if caller is not None else metrics.ANONYMOUS,
        "subject": caller.subject if caller is not None else None,
        "session": caller.handle if caller is not None else None,
        # A service's names and scopes, never its token (``session`` is the token's hash).
        "service": service.spiffe_id if service is not None else None,
        "client_id": service.client_id if service is not None else None,
        "scopes": sorted(service.scopes) if service is not None else None,
        "device": record.device.id if record.device is not None else None,
        "client": ctx.client_ip,
        "method": ctx.method,
        "path": ctx.target.path,
        "decision": decision.outcome.value,
        "reasons": decision.reasons,
        "rule": decision.rule,
        "policy": request.app[POLICY_HASH],
        **extra,
    }
    if record.risk is not None:
        fields.update(record.risk.event_fields())
    if shadow is not None:
        fields["shadow_decision"] = shadow.outcome.value
        fields["shadow_reasons"] = shadow.reasons
        if shadow.outcome is not decision.outcome:
            metrics.shadow_disagreement(ctx.route.name, decision.outcome.value, shadow.outcome.value)
            fields["shadow_disagrees"] = True
    decision_event(fields)


def _first_sign_in(policy: RoutePolicy) -> StepUp | None:
    """What the first sign-in should ask for: MFA at once when every way in needs it."""
    if policy.allow and all(rule.step_up is not None and rule.step_up.mfa for rule in policy.allow):
        return StepUp(mfa=True, max_age=None)
    return None


def _is_browser_navigation(request: web.Request, method: str) -> bool:
    # A redirect only helps a browser loading a page (browsers always ask for text/html when
    # they navigate); an API call (curl's */*, JSON, XHR) or a form post would lose its body
    # or its caller on the way through the IdP.
    headers = request.headers
    accept = headers.get("Accept", "")
    return method in ("GET", "HEAD") and "text/html" in accept.lower() \
        and not wants_json(accept, headers.get("X-Requested-With", ""))


async def _sign_in(request: web.Request, record: RequestRecord, auth: Auth, step_up: StepUp | None
                   ) -> web.StreamResponse:
    ctx = record.context
    provider = auth.provider_for(ctx.route.config.identity_provider)
    question = record.question
    if (question is not None and question.kind is Kind.START) or _is_browser_navigation(request, ctx.method):
        query = f"?{ctx.target.query}" if ctx.target.query else ""
        return_to = auth.return_urls.for_request(ctx.host, ctx.target.path + query)
        if question is not None and question.kind is not Kind.START:
            return _sign_in_elsewhere(question, return_to, step_up)
        risk = request.app[RISK]
        if risk is not None:  # sign-in-burst: a locked address starts no sign-in
            await risk.admit_sign_in(ctx.client_ip, time.time())
        return await auth.login.begin(request, provider, return_to=return_to, step_up=step_up)
    if step_up is None or record.caller is None:
        raise AuthenticationRequired("This application requires you to sign in.",
                                     headers=(("WWW-Authenticate", 'Bearer realm="ztproxy"'),))
    # RFC 9470 3: what the new authentication must satisfy.
    params = ['error="insufficient_user_authentication"']
    sentences = []
    if step_up.mfa:
        sentences.append("a second factor")
        acr_values = provider.config.mfa.acr_values
        if acr_values:
            params.append(f'acr_values="{" ".join(acr_values)}"')
    if step_up.max_age is not None:
        sentences.append("a recent sign-in")
        params.append(f"max_age={int(step_up.max_age)}")
    description = explanation(record.risk, record.decision) if record.decision is not None else None
    description = description or f"This application requires {' and '.join(sentences)}."
    params.insert(1, f'error_description="{description}"')
    raise StepUpRequired(description, headers=(("WWW-Authenticate", "Bearer " + ", ".join(params)),))


def _sign_in_elsewhere(question: Question, return_to: str, step_up: StepUp | None) -> web.StreamResponse:
    """A forward-auth answer for a browser that must sign in: where it starts, the calling proxy sends it.

    nginx turns anything but 2xx, 401 and 403 into its own 500: it gets a 401 to redirect
    on. The others pass a redirect to the client as it is. ``/.ztproxy/denied`` explains.
    """
    start = sign_in_url(return_to)
    what = "a stronger or more recent sign-in" if step_up is not None else "you to sign in"
    if question.kind is Kind.DENIED or question.form.strict_statuses:
        raise AuthenticationRequired(f"This application requires {what}.", headers=((SIGN_IN_HEADER, start),),
                                     link=(sign_in_path(return_to), "Sign in"))
    return web.Response(status=302, headers={"Location": start, SIGN_IN_HEADER: start})

"""``/.ztproxy/access/``: ask for access, follow and cancel one's requests, decide others', end grants.

    GET  /.ztproxy/access/[?route=NAME]           the page (JSON for API clients); with route, the request form
    GET  /.ztproxy/access/sign-in[?mfa=1]         sign in (again, with a second factor) and come back here
    POST /.ztproxy/access/requests                route, reason, duration -> a pending request
    POST /.ztproxy/access/requests/{id}/cancel    the requester withdraws a pending request
    POST /.ztproxy/access/requests/{id}/decide    approve=1 or deny=1, comment: an approver decides
    POST /.ztproxy/access/requests/{id}/revoke    an approver ends an active grant early

Every POST must come from a page of the proxy's own origin (the ``Origin`` header, which
browsers send with every POST; OWASP CSRF cheat sheet, "Verifying origin with standard
headers") and carry the session's CSRF token (``csrf_token``: an HMAC of a fixed label under
the per-session key that only the session cookie holds, so it is per session and the store
cannot derive it). Answers after a POST are a 303 back to the page (JSON clients get JSON).
Refusals are the usual error pages: 400 bad input, 403 not allowed, 409 too late.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import Any

from aiohttp import web
from multidict import MultiDictProxy

from ztproxy.auth import Auth, open_session
from ztproxy.config.values import parse_duration
from ztproxy.errors import (
    AccessDenied,
    AccessRequestConflict,
    AccessRequestInvalid,
    AuthenticationRequired,
    PayloadTooLarge,
    RouteNotFound,
)
from ztproxy.grants import html as pages
from ztproxy.grants.model import ACTIVE, PENDING, GrantRefused, Person
from ztproxy.grants.service import Grants, now
from ztproxy.origins import addressed_origin, normalize_origin
from ztproxy.pages import info, wants_json
from ztproxy.policy import StepUp
from ztproxy.state import RECORD
from ztproxy.state import Person as SignedIn

ACCESS_PATH = "/.ztproxy/access/"
SIGN_IN_PATH = ACCESS_PATH + "sign-in"
REQUESTS_PATH = ACCESS_PATH + "requests"
_ACTION_RE = re.compile(r"/\.ztproxy/access/requests/([0-9a-f]{16})/(cancel|decide|revoke)")
_ACTION_PATH = REQUESTS_PATH + "/{id}/{action}"
MAX_FORM = 16 * 1024
_CSRF_LABEL = b"ztproxy access-request form v1"


def is_access_path(path: str) -> bool:
    return path == ACCESS_PATH.rstrip("/") or path.startswith(ACCESS_PATH)


def request_link(route: str) -> str:
    """Where the deny page sends someone who could get in with a grant."""
    return f"{ACCESS_PATH}?route={route}"


def csrf_token(signed_in: SignedIn) -> str:
    """The session's form token: only the holder of the session cookie can compute it."""
    return hmac.new(signed_in.ticket.key, _CSRF_LABEL, hashlib.sha256).hexdigest()


def person_of(signed_in: SignedIn) -> Person:
    session = signed_in.session
    return Person(session.provider, session.subject, session.email, frozenset(session.groups), session.mfa)


async def access(request: web.Request, auth: Auth | None, grants: Grants | None) -> web.StreamResponse:
    """The endpoint of every path under ``/.ztproxy/access/``."""
    if auth is None or grants is None:
        raise RouteNotFound("Access requests are not enabled on this proxy.")
    ctx = request[RECORD].context
    path = ctx.target.path
    if path == ACCESS_PATH.rstrip("/"):
        return _see_other()
    signed_in = await open_session(request, auth, ctx.route.config.identity_provider)
    if request.method in ("GET", "HEAD"):
        if signed_in is None and path == ACCESS_PATH and _wants_json(request):
            raise AuthenticationRequired("Sign in first: open /.ztproxy/access/ in your browser.")
        if path == SIGN_IN_PATH or (path == ACCESS_PATH and signed_in is None):
            step_up = StepUp(mfa=True, max_age=None) if request.query.get("mfa") == "1" else None
            query = "" if path == SIGN_IN_PATH or not ctx.target.query else f"?{ctx.target.query}"
            return_to = auth.return_urls.for_request(ctx.host, ACCESS_PATH + query)
            provider = auth.provider_for(ctx.route.config.identity_provider)
            return await auth.login.begin(request, provider, return_to=return_to, step_up=step_up)
        if path != ACCESS_PATH or signed_in is None:
            raise RouteNotFound("There is no such page.")
        return await _overview(request, grants, signed_in)
    if request.method != "POST":
        raise AccessRequestInvalid("Use GET to see this page, and its forms to send a request.")
    _check_origin(request)  # before anything else: a cross-site post learns nothing, not even sign-in state
    if signed_in is None:
        raise AuthenticationRequired("Sign in first: open /.ztproxy/access/ in your browser.")
    form = await _form(request)
    supplied = form.get(pages.CSRF_FIELD, "")
    if not isinstance(supplied, str) or not hmac.compare_digest(supplied.encode(), csrf_token(signed_in).encode()):
        raise AccessDenied("This form is out of date or did not come from this site: reload the page and try "
                           "again.", reasons=("csrf-token-invalid",))
    try:
        answer = await _act(path, form, grants, person_of(signed_in))
    except GrantRefused as refused:
        raise _error(refused) from None
    if _wants_json(request):
        return web.json_response({"request": answer}, headers={"Cache-Control": "no-store"})
    return _see_other()


async def _act(path: str, form: MultiDictProxy[Any], grants: Grants, person: Person) -> dict[str, Any]:
    registry, at = grants.registry, now()
    if path == REQUESTS_PATH:
        route = _field(form, "route")[:100]
        try:
            duration = parse_duration(_field(form, "duration"))
        except ValueError as error:
            raise GrantRefused(400, "bad-duration", f"Duration: {error}.") from None
        made = await registry.create(person, route, grants.terms_of(route), _field(form, "reason"), duration, at)
        return made.summary(at)
    match = _ACTION_RE.fullmatch(path)
    if match is None:
        raise GrantRefused(404, "not-found", "There is no such form.")
    request_id, action = match.groups()
    comment = _field(form, "comment")
    if action == "cancel":
        changed = await registry.cancel(request_id, person, at)
    elif action == "revoke":
        changed = await registry.revoke(request_id, person, grants.terms_of, comment, at)
    elif "approve" in form and "deny" not in form:
        changed = await registry.approve(request_id, person, grants.terms_of, comment, at)
    elif "deny" in form and "approve" not in form:
        changed = await registry.deny(request_id, person, grants.terms_of, comment, at)
    else:
        raise GrantRefused(400, "no-decision", "Choose Approve or Deny.")
    return changed.summary(at)


async def _overview(request: web.Request, grants: Grants, signed_in: SignedIn) -> web.StreamResponse:
    at = now()
    person = person_of(signed_in)
    everything = await grants.registry.listed(at)
    mine = [kept for kept in everything if kept.requester.key == person.key]
    approver_of = {route for route, terms in grants.terms.items()
                   if not person.groups.isdisjoint(terms.approver_groups)}
    waiting = [kept for kept in everything if kept.state == PENDING and kept.route in approver_of
               and kept.requester.key != person.key  # nobody is offered their own request
               and all(made.by != person.key for made in kept.approvals)]
    # Routes whose requests this approver may decide now: those asking for a second factor only with one.
    ready = {route for route in approver_of if person.mfa or not grants.terms[route].approval_mfa}
    running = [kept for kept in everything if kept.state == ACTIVE and kept.route in ready]
    needs_mfa = ready != approver_of
    route = request.query.get("route", "")[:100]
    terms = grants.terms_of(route) if route else None
    token = csrf_token(signed_in)
    if _wants_json(request):
        return web.json_response({
            "csrf_token": token, "requests": [kept.summary(at) for kept in mine],
            "to_decide": [kept.summary(at) for kept in waiting], "active": [kept.summary(at) for kept in running],
            "approver_of": sorted(approver_of), "needs_mfa_to_decide": needs_mfa,
        }, headers={"Cache-Control": "no-store"})
    body = []
    if route and terms is None:
        body.append(info.paragraph(f"Access to {route} cannot be requested: no such application takes requests."))
    elif terms is not None:
        body.append(pages.request_form(REQUESTS_PATH, token, route, terms))
    body.append("<h2>Your requests</h2>" + pages.own_requests(mine, at, token, _ACTION_PATH))
    if approver_of:
        body.append("<h2>Requests waiting for your decision</h2>")
        if needs_mfa:
            body.append(info.paragraph("Deciding some of these requests needs a sign-in with a second factor.")
                        + info.link_button(f"{SIGN_IN_PATH}?mfa=1", "Sign in with a second factor"))
        decidable = [kept for kept in waiting if kept.route in ready]
        if decidable or not needs_mfa:
            body.append(pages.to_decide(decidable, token, _ACTION_PATH))
        if running:
            body.append("<h2>Access granted now</h2>" + pages.to_end(running, token, _ACTION_PATH))
    response = info.render("Access requests", "".join(body), kicker=f"ztproxy · {person.label}")
    # The proxy's pages say no-referrer, with which browsers send "Origin: null" on a form's POST
    # (Fetch, "serializing a request origin"): same-origin lets this page's forms show their origin,
    # and still tells no other site where the user was.
    response.headers["Referrer-Policy"] = "same-origin"
    return response


def _wants_json(request: web.Request) -> bool:
    return wants_json(request.headers.get("Accept", ""), request.headers.get("X-Requested-With", ""))


def _see_other() -> web.Response:
    return web.Response(status=303, headers={"Location": ACCESS_PATH})


def _check_origin(request: web.Request) -> None:
    """403 unless the post comes from a page of the origin the client addressed (OWASP: verify Origin)."""
    ctx = request[RECORD].context
    scheme, host = ctx.scheme, ctx.host_header
    if ctx.forwarded.peer_trusted:  # the scheme and host the client used, as the trusted proxy saw them
        scheme = request.headers.get("X-Forwarded-Proto", scheme)
        host = request.headers.get("X-Forwarded-Host", host)
    origins = request.headers.getall("Origin", [])
    addressed = addressed_origin(scheme, host)
    if len(origins) != 1 or addressed is None or normalize_origin(origins[0]) != addressed:
        raise AccessDenied("This form was not sent from this site's own pages.", reasons=("origin-not-allowed",))


async def _form(request: web.Request) -> MultiDictProxy[Any]:
    if request.content_length is not None and request.content_length > MAX_FORM:
        raise PayloadTooLarge(f"A form may be at most {MAX_FORM} bytes.")
    if request.content_type not in ("application/x-www-form-urlencoded", "multipart/form-data"):
        raise AccessRequestInvalid("Send the page's form (application/x-www-form-urlencoded).")
    return await request.post()


def _field(form: MultiDictProxy[Any], name: str) -> str:
    value = form.get(name, "")
    if not isinstance(value, str):
        raise GrantRefused(400, f"bad-{name}", f"{name} must be text.")
    return value


def _error(refused: GrantRefused) -> Exception:
    message = refused.message
    if refused.status == 400:
        return AccessRequestInvalid(message)
    if refused.status == 403:
        return AccessDenied(message, reasons=(refused.code,))
    if refused.status == 404:
        return RouteNotFound(message)
    return AccessRequestConflict(message)

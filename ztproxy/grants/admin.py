"""The admin API's grants: list access requests, approve, deny or end them as an admin.

    GET  /admin/grants[?state=pending|active|ended|denied|cancelled|expired]  -> {"grants": [...]}
    POST /admin/grants/{id}/approve|deny|revoke  {"comment": "..."}            -> {"grant": {...}}

Behind the admin token like the rest of the API (:mod:`ztproxy.admin_api`, which registers these
routes and answers a :class:`~ztproxy.grants.model.GrantRefused` as its JSON error). An admin's
approval completes a request whatever ``approvals`` asks, recorded as an admin decision
(``approved_by: ["admin"]``); every change is announced to every worker and replica, and told
to the webhooks, as the access pages' are. Refusals: 404 no such request, 409 no longer
pending (or active, to end it), 400 bad input.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import orjson
from aiohttp import web

from ztproxy.grants.model import STATES, GrantRefused, check_text
from ztproxy.grants.registry import GrantRegistry
from ztproxy.grants.service import build_registry, now, terms_by_route, webhook_client
from ztproxy.policy.criteria.grant import Grant
from ztproxy.sessions.store import open_store
from ztproxy.state import CONFIG

ADMIN_GRANTS = web.AppKey("admin_grants", GrantRegistry)
_TERMS = web.AppKey("admin_grant_terms", dict[str, Grant])
_ID_RE = re.compile(r"[0-9a-f]{16}")
MAX_BODY = 4096  # a comment of MAX_REASON characters, JSON-escaped, fits


def json_answer(data: dict[str, object]) -> web.Response:
    return web.json_response(data, headers={"Cache-Control": "no-store"})


def add_grant_routes(app: web.Application) -> None:
    app.router.add_get("/admin/grants", list_grants)
    app.router.add_post("/admin/grants/{id}/{action:approve|deny|revoke}", decide)
    app.cleanup_ctx.append(_grants_ctx)


async def _grants_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    store = open_store(config.sessions)
    http = webhook_client() if config.grants.webhooks else None
    terms = terms_by_route(config)
    registry, webhooks = build_registry(config, store, terms, http)
    app[ADMIN_GRANTS] = registry
    app[_TERMS] = terms
    try:
        yield
    finally:
        if webhooks is not None:
            await webhooks.close()
        if http is not None:
            await http.close()
        await store.close()


async def list_grants(request: web.Request) -> web.Response:
    state = request.query.get("state")
    if state is not None and state not in STATES:
        raise GrantRefused(400, "bad-state", f"state is one of {', '.join(STATES)}.")
    at = now()
    listed = await request.app[ADMIN_GRANTS].listed(at)
    return json_answer({"grants": [kept.summary(at) for kept in listed
                                   if state is None or kept.state_at(at) == state]})


async def decide(request: web.Request) -> web.Response:
    request_id, action = request.match_info["id"], request.match_info["action"]
    if not _ID_RE.fullmatch(request_id):
        raise GrantRefused(400, "bad-id", "A request id is 16 lowercase hexadecimal characters, as GET "
                                          "/admin/grants lists them.")
    comment = check_text(await _comment(request), "comment")
    registry, terms = request.app[ADMIN_GRANTS], request.app[_TERMS]
    at = now()
    if action == "approve":
        changed = await registry.approve(request_id, None, terms.get, comment, at)
    elif action == "deny":
        changed = await registry.deny(request_id, None, terms.get, comment, at)
    else:
        changed = await registry.revoke(request_id, None, terms.get, comment, at)
    return json_answer({"grant": changed.summary(at)})


async def _comment(request: web.Request) -> str:
    """The ``comment`` of a ``{"comment": ...}`` body (none, or an empty one: no comment)."""
    raw = await request.content.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise GrantRefused(413, "payload-too-large", f"The body may be at most {MAX_BODY} bytes.")
    if not raw.strip():
        return ""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict) or set(body) - {"comment"} or not isinstance(body.get("comment", ""), str):
        raise GrantRefused(400, "bad-json", 'The body is {"comment": "..."} (or nothing).')
    return str(body.get("comment", ""))

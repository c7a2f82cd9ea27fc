"""The end of the pipeline for forward-auth requests: the answer instead of the forwarded request.

Only allowed requests get here (refusals are pages or sign-in answers made earlier):
``/.ztproxy/auth`` answers 200 with the identity headers the calling proxy copies to
the app; ``/.ztproxy/start`` sends the signed-in browser on to where it was going;
``/.ztproxy/denied`` says there is nothing to explain any more.
"""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web

from ztproxy.auth import AUTH
from ztproxy.errors import RouteNotFound
from ztproxy.forward_auth import Kind, allowed_headers
from ztproxy.memo import Memo
from ztproxy.pages import secure
from ztproxy.pages.info import link_button, paragraph, render
from ztproxy.state import RECORD

# The allowed answer's headers by (identity headers, the route's claim headers): a session's
# identity headers are the same objects for the life of its cached assertion.
_ALLOWED: Memo[tuple[tuple[tuple[str, str], ...], int], tuple[Mapping[str, str], list[tuple[str, str]]]] = Memo(4096)


async def answer(request: web.Request) -> web.StreamResponse:
    record = request[RECORD]
    question = record.question
    assert question is not None  # app.handle sends only forward-auth requests here
    ctx = record.context
    if question.kind is Kind.AUTH:
        claim_headers = ctx.route.config.claim_headers
        key = (record.upstream_identity, id(claim_headers))
        entry = _ALLOWED.get(key)
        if entry is None or entry[0] is not claim_headers:
            # Never cached: a revoked session or a changed device must be refused at the next request.
            # (The pages' other protective headers mean nothing to a calling proxy, which drops them.)
            headers = [*allowed_headers(claim_headers, record.upstream_identity), ("Cache-Control", "no-store")]
            entry = _ALLOWED.remember(key, (claim_headers, headers))
        return web.Response(status=200, headers=[*entry[1], ("X-Request-Id", ctx.request_id)])
    query = f"?{ctx.target.query}" if ctx.target.query else ""
    auth = request.app[AUTH]
    if auth is None:
        raise RouteNotFound("There is no such ztproxy endpoint.")
    back = auth.return_urls.for_request(ctx.host, ctx.target.path + query)
    if question.kind is Kind.START:
        return secure(web.Response(status=302, headers={"Location": back}))
    return secure(render("Nothing is refused any more",
                         paragraph("This request would be allowed now.") + link_button(back, "Try again")))

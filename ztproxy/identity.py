"""What an upstream app learns about the caller: the signed assertion, identity headers, the JWKS.

Built once per app from ``config.assertion`` (``KeyRing`` + ``AssertionSigner``). For a
signed-in request the signer hands out a cached assertion for (session, route) most of
the time, so signing stays off the hot path. The JWKS that verifies the assertions is
served at ``/.well-known/ztproxy/jwks.json`` on every route host and on the admin
listener, with an ETag and a max-age shorter than the key publication lead time.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping

import structlog
from aiohttp import web
from multidict import CIMultiDict

from ztproxy import metrics
from ztproxy.assertion import ASSERTION_HEADER, AssertionSigner, identity_headers
from ztproxy.authenticate import SignedIn
from ztproxy.context import CompiledRoute
from ztproxy.keys import KeyRing
from ztproxy.memo import Memo
from ztproxy.policy.model import Device, Identity
from ztproxy.state import CONFIG

JWKS_PATH = "/.well-known/ztproxy/jwks.json"

SIGNER = web.AppKey("assertion_signer", AssertionSigner)
KEYRING = web.AppKey("keyring", KeyRing)


async def assertion_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    keyring = KeyRing.from_config(config.assertion, now=time.time())
    app[KEYRING] = keyring
    app[SIGNER] = signer = AssertionSigner(keyring, issuer=config.public_url)
    unwatch = metrics.watch_assertion_signs(lambda: signer.signs)
    try:
        yield
    finally:
        unwatch()
    # For the benchmark's signs-per-request figure, and for operators curious about the cache.
    structlog.get_logger("ztproxy.assertion").info("assertion_stats", signs=signer.signs)


def add_identity(headers: CIMultiDict[str], app: web.Application, route: CompiledRoute, signed_in: SignedIn,
                 device: Device | None) -> None:
    """Add the caller's identity to upstream ``headers`` (client-sent versions already removed)."""
    identity = signed_in.session.identity
    token = app[SIGNER].assertion(session=signed_in.ticket.public_id, route=route.name, audience=route.audience,
                                  identity=identity, device=device, now=time.time())
    headers[ASSERTION_HEADER] = token
    for name, value in _identity_headers(identity, route.config.claim_headers):
        headers[name] = value


# The headers of an identity for a route's claim_headers, by the objects' ids: a session's
# identity object lives as long as its cached copy, so its headers are worked out once.
# Each entry holds both objects, so neither id can be reused while the entry is there.
_HEADERS: Memo[tuple[int, int], tuple[Identity, Mapping[str, str], list[tuple[str, str]]]] = Memo(4096)


def _identity_headers(identity: Identity, claim_headers: Mapping[str, str]) -> list[tuple[str, str]]:
    key = (id(identity), id(claim_headers))
    entry = _HEADERS.get(key)
    if entry is not None and entry[0] is identity and entry[1] is claim_headers:
        return entry[2]
    pairs = identity_headers(identity, claim_headers=claim_headers)
    _HEADERS.remember(key, (identity, claim_headers, pairs))
    return pairs


async def jwks(request: web.Request) -> web.StreamResponse:
    if request.method not in ("GET", "HEAD"):
        return web.Response(status=405, headers={"Allow": "GET, HEAD"})
    body, etag, max_age = request.app[KEYRING].jwks_document(time.time())
    headers = {"ETag": etag, "Cache-Control": f"public, max-age={max_age}", "X-Content-Type-Options": "nosniff"}
    if _etag_matches(etag, request.headers.get("If-None-Match", "")):
        return web.Response(status=304, headers=headers)
    return web.Response(body=body, content_type="application/json", headers=headers)


def _etag_matches(etag: str, if_none_match: str) -> bool:
    # RFC 9110 13.1.2: a list of entity tags (weak comparison) or "*".
    tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return "*" in tags or etag.removeprefix("W/") in tags

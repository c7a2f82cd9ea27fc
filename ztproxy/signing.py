"""The assertion signer and its keys, as the app shares them, and the JWKS that verifies them.

Built once per app from ``config.assertion`` (``KeyRing`` + ``AssertionSigner``) in a
cleanup context and kept under ``SIGNER`` and ``KEYRING``. The JWKS is served at
``/.well-known/ztproxy/jwks.json`` on every route host and on the admin listener, with an
ETag and a max-age shorter than the key publication lead time.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import structlog
from aiohttp import web

from ztproxy import metrics
from ztproxy.assertion import AssertionSigner
from ztproxy.assertion.keys import KeyRing
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

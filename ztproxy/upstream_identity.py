"""The assertion step: what an upstream app learns about the caller, worked out once per request.

For a request the policy let through with someone signed in, the signed assertion
(``X-Ztproxy-Jwt-Assertion``) and the plain identity headers go into the request record (for
a calling service: its assertion, and ``X-Ztproxy-User`` with its client id or SPIFFE ID);
the upstream and the WebSocket relay add them after removing every client-sent spelling.
The signer hands out a cached assertion for (session, route) most of the time, so
signing stays off the hot path. A CORS preflight forwarded without a sign-in check gets
no identity, whoever sent it.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Mapping
from functools import partial

from aiohttp import web

from ztproxy.assertion import ASSERTION_HEADER, USER_HEADER, identity_headers
from ztproxy.memo import Memo
from ztproxy.policy.model import Identity
from ztproxy.policy.reasons import CORS_PREFLIGHT
from ztproxy.signing import SIGNER
from ztproxy.state import RECORD, ServiceCaller


def assert_identity(request: web.Request) -> None:
    """Pipeline stage: the caller's identity for the upstream, when there is a caller to assert."""
    record = request[RECORD]
    caller = record.caller
    decision = record.decision
    if caller is None or decision is None or not decision.allowed or CORS_PREFLIGHT in decision.reasons:
        return
    route = record.context.route
    if isinstance(caller, ServiceCaller):
        service = caller.service
        token = request.app[SIGNER].assertion(session=caller.handle, route=route.name, audience=route.audience,
                                              identity=service, device=record.device, now=time.time())
        record.upstream_identity = ((ASSERTION_HEADER, token), (USER_HEADER, service.subject))
        return
    identity = caller.identity
    token = request.app[SIGNER].assertion(session=caller.handle, route=route.name, audience=route.audience,
                                          identity=identity, device=record.device, now=time.time(),
                                          risk=record.risk.level if record.risk is not None else "low")
    record.upstream_identity = ((ASSERTION_HEADER, token), *_identity_headers(identity, route.config.claim_headers))


# The headers of an identity for a route's claim_headers, by the objects' ids: a session's
# identity object lives as long as its cached copy, so its headers are worked out once.
# An entry holds the route's claim_headers (its id can't be reused meanwhile) and the
# identity only weakly, and goes with it: held strongly, the identities of copies long
# replaced stayed (with their claims) until the map was full, thousands per worker.
_Entry = tuple[weakref.ref[Identity], Mapping[str, str], tuple[tuple[str, str], ...]]
_HEADERS: Memo[tuple[int, int], _Entry] = Memo(4096)


def _identity_headers(identity: Identity, claim_headers: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    key = (id(identity), id(claim_headers))
    entry = _HEADERS.get(key)
    if entry is not None and entry[0]() is identity and entry[1] is claim_headers:
        return entry[2]
    pairs = tuple(identity_headers(identity, claim_headers=claim_headers))
    _HEADERS.remember(key, (weakref.ref(identity, partial(_forget, key)), claim_headers, pairs))
    return pairs


def _forget(key: tuple[int, int], gone: weakref.ref[Identity]) -> None:
    entry = _HEADERS.get(key)
    if entry is not None and entry[0] is gone:  # not a newer entry under the same ids
        del _HEADERS[key]



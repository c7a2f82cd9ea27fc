"""Risk stage: what this request's context says about its session (``ztproxy.risk``).

After authentication and the device stage, before authorization: the session's context
at sign-in and its last network, browser and device are compared with the request's, in
memory (the signals are pure functions). Only when something changed (a move, a first
device, a signal) does the request wait for a store write, or for the revocation a signal
calls for; the authorization stage then enforces the verdict in the request record
(a lock or revocation refuses, a step-up asks for a new sign-in) and the policy sees the
risk level (``max_risk``).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable

from aiohttp import web

from ztproxy.risk_service import RISK
from ztproxy.state import RECORD, Person


def assess_risk(request: web.Request) -> Awaitable[None] | None:
    """Pipeline stage: nothing to do for anonymous requests, services, or without the risk service."""
    service = request.app[RISK]
    record = request[RECORD]
    caller = record.caller
    if service is None or not isinstance(caller, Person):
        return None  # a service's credential is judged on its own (token, certificate), not a session
    now = time.time()
    record.risk = verdict = service.judge(record.context, caller.session, request.headers.get("User-Agent"),
                                          record.device, now)
    if not verdict.changed:
        return None
    return service.act(caller.ticket, caller.session, verdict, record.context.route.name, now)

"""Device stage: from what device the request comes, and in what state (posture providers).

Runs after authentication and before authorization, only on routes whose decision can
depend on the request (never on public ones), and only when providers are configured.
Posture is assessed on every request; providers cache for at most their configured TTL,
so a device that falls out of compliance loses access within that TTL.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable

from aiohttp import web

from ztproxy.auth import AUTH
from ztproxy.posture import Posture
from ztproxy.posture.service import POSTURE, device_of
from ztproxy.state import RECORD, Person, RequestRecord, ServiceCaller


def assess_device(request: web.Request) -> Awaitable[None] | None:
    """Pipeline stage: nothing to do without posture providers or on a public route."""
    posture = request.app[POSTURE]
    record = request[RECORD]
    if posture is None or not record.context.route.needs_identity:
        return None
    caller = record.caller
    if isinstance(caller, ServiceCaller) and caller.service.binding == "mtls":
        return None  # the client certificate is the service's (its SVID), no device's
    return _assess(request, record, posture)


async def _assess(request: web.Request, record: RequestRecord, posture: Posture) -> None:
    caller = record.caller
    device = await device_of(request, posture, caller.subject if caller is not None else None)
    auth = request.app[AUTH]
    if device is not None and auth is not None and auth.effects.active:
        device = auth.effects.device(device)  # a security signal may say it is not compliant
    record.device = device
    if device is not None and isinstance(caller, Person) and auth is not None:
        # So revoking a device ends its sessions: a dict lookup, one background write per
        # session, device and worker.
        auth.sessions.note_device(caller.ticket.store_key, caller.session, device.id, time.time())

"""Device stage: from what device the request comes, and in what state (posture providers).

Runs after authentication and before authorization, only on routes whose decision can
depend on the request (never on public ones), and only when providers are configured.
Posture is assessed on every request; providers cache for at most their configured TTL,
so a device that falls out of compliance loses access within that TTL.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable
from datetime import UTC, datetime

from aiohttp import web

from ztproxy.authenticate import AUTH, SIGNED_IN
from ztproxy.policy.model import Device
from ztproxy.posture import Posture, PostureQuery, peer_certificate
from ztproxy.state import CONFIG, CONTEXT

POSTURE = web.AppKey[Posture | None]("posture")
DEVICE = web.RequestKey("device", Device)


async def posture_ctx(app: web.Application) -> AsyncIterator[None]:
    posture = Posture.from_config(app[CONFIG])
    if not posture.names:
        app[POSTURE] = None
        yield
        return
    async with posture:
        app[POSTURE] = posture
        yield


def assess_device(request: web.Request) -> Awaitable[None] | None:
    """Pipeline stage: nothing to do without posture providers or on a public route."""
    posture = request.app[POSTURE]
    if posture is None or not request[CONTEXT].route.needs_identity:
        return None
    return _assess(request, posture)


async def _assess(request: web.Request, posture: Posture) -> None:
    device = await device_of(request, posture)
    if device is not None:
        request[DEVICE] = device
        signed_in = request.get(SIGNED_IN)
        auth = request.app[AUTH]
        if signed_in is not None and auth is not None:
            # So revoking a device ends its sessions: a dict lookup, one background write per
            # session, device and worker.
            auth.sessions.note_device(signed_in.ticket.store_key, signed_in.session, device.id, time.time())


async def device_of(request: web.Request, posture: Posture) -> Device | None:
    signed_in = request.get(SIGNED_IN)
    return await posture.device_for(PostureQuery(
        peer_certificate=peer_certificate(request.transport),
        headers=request.headers,
        subject=signed_in.session.subject if signed_in is not None else None,
        now=datetime.now(UTC),
    ))

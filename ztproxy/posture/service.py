"""The app's posture service: opened and closed with the app, asked once per request.

``posture_ctx`` (a cleanup context) builds :class:`~ztproxy.posture.Posture` from the
``devices:`` section and keeps it under ``POSTURE`` (None when no provider is configured);
``device_of`` asks it about one request: its client certificate, its headers, and the
subject signed in, if any. The device stage and ``/.ztproxy/me`` both use it.
``caller_certificate`` is the client certificate of whoever is asking: the TLS peer's, except
in forward-auth, where the peer is the calling proxy.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

from aiohttp import web

from ztproxy.policy.model import Device
from ztproxy.posture.client_cert import peer_certificate
from ztproxy.posture.provider import Posture, PostureQuery
from ztproxy.state import CONFIG, RECORD

POSTURE = web.AppKey[Posture | None]("posture")


async def posture_ctx(app: web.Application) -> AsyncIterator[None]:
    posture = Posture.from_config(app[CONFIG])
    if not posture.names:
        app[POSTURE] = None
        yield
        return
    async with posture:
        app[POSTURE] = posture
        yield


def caller_certificate(request: web.Request) -> bytes | None:
    """The DER client certificate of the caller, if it sent one (dates unchecked: see ``peer_certificate``).

    In forward-auth (``RequestRecord.question``) the TLS peer is the calling proxy (nginx,
    Envoy, a mesh sidecar), never the user or service it asks about: its certificate must
    not become their device, workload or token binding, so there is none.
    """
    record = request.get(RECORD)
    if record is not None and record.question is not None:
        return None
    return peer_certificate(request.transport)


async def device_of(request: web.Request, posture: Posture, subject: str | None) -> Device | None:
    return await posture.device_for(PostureQuery(
        peer_certificate=caller_certificate(request),
        headers=request.headers,
        subject=subject,
        now=datetime.now(UTC),
    ))

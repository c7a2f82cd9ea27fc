"""Webhooks: each step of an access request posted to the approvers' tools, signed, retried, never in the way.

For every step (``grant.requested``, ``grant.approved``, ``grant.denied``, ``grant.started``,
``grant.ended``, ``grant.cancelled``) each webhook serving the route's approver groups
(``groups`` empty: every route) gets a POST with the JSON body
``{"event", "request": {id, route, requester, reason, duration_s, approvals, state, ends_at}}``,
or with ``format: slack`` a Slack-compatible ``{"text": ...}``. With a secret, the headers
``X-Ztproxy-Timestamp`` (Unix seconds) and ``X-Ztproxy-Signature: v1=<hex HMAC-SHA256 of
"{timestamp}.{body}">`` let the receiver check where it comes from and how old it is (the
scheme of Stripe's and Slack's signed webhooks; a receiver refuses old timestamps to stop replays).

:meth:`Webhooks.notify` only queues a delivery and returns: the request that caused the step
never waits. A delivery that fails (no connection, a timeout, 5xx, 429) is tried again after
:data:`RETRY_DELAYS`, then dropped with a warning; other answers are final. At most
:data:`MAX_IN_FLIGHT` deliveries wait at once, beyond that new ones are dropped and logged.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import Callable, Sequence

import aiohttp
import orjson
import structlog

from ztproxy.config.grants import WebhookConfig
from ztproxy.grants.model import GrantRequest, format_duration
from ztproxy.policy.criteria.grant import Grant

RETRY_DELAYS = (1.0, 2.0, 4.0, 8.0, 16.0)  # seconds before each new attempt
MAX_IN_FLIGHT = 200
TIMESTAMP_HEADER = "X-Ztproxy-Timestamp"
SIGNATURE_HEADER = "X-Ztproxy-Signature"
NOTIFIED = ("grant.requested", "grant.approved", "grant.denied", "grant.started", "grant.ended", "grant.cancelled")

_log = structlog.get_logger("ztproxy.grants")


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """The ``X-Ztproxy-Signature`` value of ``body`` sent at ``timestamp``."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"v1={digest}"


def payload(event: str, request: GrantRequest, now: float) -> dict[str, object]:
    return {"event": event, "request": {
        "id": request.id, "route": request.route, "requester": request.requester_label, "reason": request.reason,
        "duration_s": round(request.duration), "approvals": len(request.approvals), "state": request.state_at(now),
        "ends_at": None if request.ends_at is None else int(request.ends_at)}}


def slack_text(event: str, request: GrantRequest, now: float) -> str:
    what = {"grant.requested": "asks for access", "grant.approved": "was approved (one approval)",
            "grant.denied": "was denied access", "grant.started": "has access now",
            "grant.ended": "no longer has access", "grant.cancelled": "cancelled the request"}.get(event, event)
    text = f"{request.requester_label} {what} to *{request.route}*"
    if event == "grant.requested":
        text += f" for {format_duration(request.duration)}: {request.reason or '(no reason given)'}"
    return f"{text} (request {request.id}, {request.state_at(now)})"


class Webhooks:
    """Deliveries queued by :meth:`notify`, sent in the background (see the module docstring)."""

    def __init__(self, hooks: Sequence[WebhookConfig], http: aiohttp.ClientSession,
                 terms_of: Callable[[str], Grant | None], *, retry_delays: Sequence[float] = RETRY_DELAYS) -> None:
        self._hooks = tuple(hooks)
        self._http = http
        self._terms_of = terms_of
        self._retry_delays = tuple(retry_delays)
        self._in_flight: set[asyncio.Task[None]] = set()

    def notify(self, event: str, request: GrantRequest, now: float) -> None:
        if event not in NOTIFIED:
            return
        terms = self._terms_of(request.route)
        groups = terms.approver_groups if terms is not None else frozenset()
        for hook in self._hooks:
            if hook.groups and groups.isdisjoint(hook.groups):
                continue
            if len(self._in_flight) >= MAX_IN_FLIGHT:
                _log.warning("grant_webhook_dropped", url=hook.url, event=event, grant=request.id, why="queue-full")
                continue
            if hook.format == "slack":
                body = orjson.dumps({"text": slack_text(event, request, now)})
            else:
                body = orjson.dumps(payload(event, request, now))
            task = asyncio.create_task(self._deliver(hook, event, request.id, body))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)

    async def close(self) -> None:
        """Stop every delivery still waiting (at shutdown)."""
        for task in list(self._in_flight):
            task.cancel()
        await asyncio.gather(*self._in_flight, return_exceptions=True)

    async def _deliver(self, hook: WebhookConfig, event: str, grant: str, body: bytes) -> None:
        for attempt, delay in enumerate((0.0, *self._retry_delays)):
            if delay:
                await asyncio.sleep(delay)
            problem = await self._post(hook, body)
            if problem is None:
                _log.info("grant_webhook_sent", url=hook.url, event=event, grant=grant, attempts=attempt + 1)
                return
            if problem.startswith("final"):
                break
        _log.warning("grant_webhook_failed", url=hook.url, event=event, grant=grant, problem=problem)

    async def _post(self, hook: WebhookConfig, body: bytes) -> str | None:
        """None when delivered; else why not (``final ...`` when trying again would not help)."""
        headers = {"Content-Type": "application/json", "User-Agent": "ztproxy"}
        if hook.secret is not None:
            timestamp = str(int(time.time()))
            headers[TIMESTAMP_HEADER] = timestamp
            headers[SIGNATURE_HEADER] = signature(hook.secret, timestamp, body)
        try:
            async with asyncio.timeout(hook.timeout):
                async with self._http.post(hook.url, data=body, headers=headers, allow_redirects=False) as response:
                    status = response.status
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            return f"{type(error).__name__}: {error}"[:200]
        if 200 <= status < 300:
            return None
        if status >= 500 or status == 429:
            return f"HTTP {status}"
        return f"final: HTTP {status}"

"""The facts a policy decision looks at, from what a request's record has gathered.

The authorization stage decides on them; the WebSocket relay decides again on them, with
the caller's identity and device as they are now, when a security signal changes either
while a socket is open. No I/O.
"""

from __future__ import annotations

from datetime import UTC, datetime

from ztproxy.policy import RequestFacts, evaluate
from ztproxy.policy.model import Device, Identity, Service
from ztproxy.risk.enforce import enforce
from ztproxy.state import RequestRecord


def request_facts(record: RequestRecord, identity: Identity | None, device: Device | None, service: Service | None,
                  now: datetime, *, granted: bool = False) -> RequestFacts:
    ctx = record.context
    return RequestFacts(method=ctx.method, path=ctx.target.path, client_ip=ctx.client_ip, now=now,
                        identity=identity, device=device, service=service,
                        risk=record.risk.level if record.risk is not None else "low", granted=granted)


def still_allowed(record: RequestRecord, identity: Identity, device: Device | None, *, granted: bool) -> bool:
    """Whether the route's policy would let this (long-lived: a WebSocket) request through now,
    with the caller's identity, device and grant as they are now."""
    policy = record.context.route.policy
    if policy.constant is not None:
        return policy.constant.allowed
    facts = request_facts(record, identity, device, None, datetime.now(UTC), granted=granted)
    return enforce(record.risk, evaluate(policy, facts)).allowed

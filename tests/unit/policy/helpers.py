"""Building rules, facts and decisions tersely for the policy tests."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

from ztproxy.config.rules import Rule
from ztproxy.policy import Decision, Device, Identity, RequestFacts, compile_route_policy, evaluate

NOW = datetime(2024, 5, 6, 10, 0, tzinfo=UTC)  # a Monday
USER = Identity(subject="u-1", email="Ada@Corp.Example", groups=frozenset({"staff"}), mfa=True,
                auth_time=NOW - timedelta(minutes=5), session_started=NOW - timedelta(hours=1))
LAPTOP = Device(id="d-1", managed=True, disk_encrypted=True, platform="macos", os_version="14.2",
                last_seen=NOW - timedelta(minutes=1), score=80, owner="u-1")


def facts(identity: Identity | None = USER, device: Device | None = LAPTOP, **changes: Any) -> RequestFacts:
    base: dict[str, Any] = {"method": "GET", "path": "/", "client_ip": "192.0.2.10", "now": NOW}
    return RequestFacts(identity=identity, device=device, **(base | changes))


def user(**changes: Any) -> Identity:
    return dataclasses.replace(USER, **changes)  # (its __slots__ include __weakref__)


def device(**changes: Any) -> Device:
    return Device(**({field: getattr(LAPTOP, field) for field in LAPTOP.__slots__} | changes))


def decide(rule: dict[str, Any], request: RequestFacts) -> Decision:
    """The decision of a route with this one allow rule (validated as the config would)."""
    return evaluate(compile_route_policy((Rule.model_validate(rule),), {}), request)


def reasons(rule: dict[str, Any], request: RequestFacts) -> tuple[str, ...]:
    """() when the rule holds, else the reasons it fails."""
    decision = decide(rule, request)
    return () if decision.allowed else decision.reasons

"""What the policy engine works on: request facts in, a decision with its reasons out.

Everything here is frozen and free of I/O: the facts are gathered before evaluation
(session, IdP, device posture), and the clock is one of them (``now``).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any, Protocol


class Outcome(enum.Enum):
    ALLOW = "allow"
    DENY = "deny"
    STEP_UP = "step-up"  # would be allowed after a stronger or fresher login


@dataclass(frozen=True, slots=True)
class StepUp:
    """What a new login must give: MFA, and/or an authentication no older than ``max_age`` seconds."""

    mfa: bool
    max_age: float | None


@dataclass(frozen=True, slots=True)
class Decision:
    outcome: Outcome
    reasons: tuple[str, ...]  # the criteria that held (allow) or the failures (deny, step-up)
    rule: str | None = None  # the deciding rule, e.g. "allow[0]", "allow[1]:employees[0]", "deny[0]"
    step_up: StepUp | None = None  # set when outcome is STEP_UP

    @property
    def allowed(self) -> bool:
        return self.outcome is Outcome.ALLOW


def _aware(value: datetime | None, name: str) -> None:
    # Comparing naive and aware datetimes raises, and a naive one has no defined instant.
    if value is not None and value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime")


@dataclass(frozen=True, slots=True, weakref_slot=True)  # weakly held by upstream_identity's memo
class Identity:
    """The signed-in user (or machine) as the session and the IdP describe it."""

    subject: str
    email: str | None = None
    name: str | None = None
    groups: frozenset[str] = frozenset()
    claims: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    acr: str | None = None
    amr: tuple[str, ...] = ()
    auth_time: datetime | None = None  # when the user last authenticated at the IdP
    session_started: datetime | None = None
    mfa: bool = False  # whether that authentication used a second factor (from acr/amr)

    def __post_init__(self) -> None:
        _aware(self.auth_time, "auth_time")
        _aware(self.session_started, "session_started")


@dataclass(frozen=True, slots=True)
class Service:
    """A calling service: an OAuth client with an access token, or a workload with its certificate."""

    subject: str  # the SPIFFE ID of a workload, else the token's client_id
    client_id: str | None = None  # of the access token
    spiffe_id: str | None = None  # of the workload certificate, or the token's sub when it is one
    scopes: frozenset[str] = frozenset()
    issuer: str | None = None  # of the token
    binding: str = "none"  # how the token is bound to its sender: "mtls", "dpop" or "none"
    token_id: str | None = None  # the token's jti, when it has one


@dataclass(frozen=True, slots=True)
class Device:
    """The device a request comes from, as the posture providers describe it."""

    id: str
    managed: bool = False
    disk_encrypted: bool = False
    platform: str | None = None  # e.g. "macos", "windows" (compared case-insensitively)
    os_version: str | None = None  # dotted numbers, e.g. "14.2.1"
    last_seen: datetime | None = None  # when the posture was last reported
    score: int | None = None  # 0-100, from a posture provider
    owner: str | None = None  # subject or email of the user the device belongs to
    # False while a security signal (CAEP device-compliance-change) says it is not compliant:
    # then it fails every device criterion, whatever the providers report.
    compliant: bool = True

    def __post_init__(self) -> None:
        _aware(self.last_seen, "last_seen")


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """What a decision may look at; gathered before evaluation (no I/O during it)."""

    method: str
    path: str  # canonical, as routing matched it
    client_ip: str  # the client as intake determined it (trusted X-Forwarded-For or the peer)
    now: datetime  # aware; the only clock criteria look at
    identity: Identity | None = None  # None: nobody signed in
    device: Device | None = None  # None: no posture known
    service: Service | None = None  # a calling service; person criteria never match one
    risk: str = "low"  # the session's risk level (ztproxy.risk): low, medium or high
    granted: bool = False  # the caller holds an approved, unexpired grant for this route (ztproxy.grants)

    def __post_init__(self) -> None:
        _aware(self.now, "now")


class Criterion(Protocol):
    """One compiled criterion of a rule: None when it holds, else the reason it fails."""

    @property
    def name(self) -> str:
        """The criterion as written in the configuration, reported when an allow rule holds."""
        ...

    def __call__(self, facts: RequestFacts) -> str | None: ...


@dataclass(frozen=True, slots=True)
class CompiledRule:
    label: str  # where it comes from: "allow[1]:employees[0]"
    criteria: tuple[Criterion, ...]
    canonical: str  # the rule as canonical JSON, for the policy hash
    step_up: StepUp | None  # what a new login could give it (rules with mfa or max_auth_age)
    decision: Decision  # when the rule holds: ALLOW (allow rules) or DENY (deny rules)

    def failures(self, facts: RequestFacts) -> list[str]:
        return [reason for criterion in self.criteria if (reason := criterion(facts)) is not None]

    def holds(self, facts: RequestFacts) -> bool:
        return all(criterion(facts) is None for criterion in self.criteria)


@dataclass(frozen=True, slots=True)
class RoutePolicy:
    allow: tuple[CompiledRule, ...]
    deny: tuple[CompiledRule, ...] = ()
    # Known at compile time when no fact can change the decision: a first allow rule that is
    # just ``public: true`` with no deny rule, or no allow rule at all. No work per request.
    constant: Decision | None = None

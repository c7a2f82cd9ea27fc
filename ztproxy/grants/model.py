"""An access request and its state machine: pure, with the clock passed in (``now``, Unix seconds).

    pending ──approve (the N-th distinct approver, or an admin)──> active ──its end, or revoke──> ended
       │  └─approve (fewer than N so far)─> pending
       ├──deny──> denied
       ├──cancel (the requester)──> cancelled
       └──request_ttl passes──> expired

A request names a route, its requester (identity provider and subject), a reason and a
duration. The grant's time runs from the approval that completes it. Every transition checks
who may make it and returns a new :class:`GrantRequest`; a refused one raises
:class:`GrantRefused` with the HTTP status the pages and the admin API answer (400 bad input,
403 not allowed, 409 no longer possible). Records hold no secrets: names, groups, times, words.
"""

from __future__ import annotations

import dataclasses
import secrets
from dataclasses import dataclass
from typing import Any

import orjson

from ztproxy.policy.criteria.grant import Grant

PENDING, ACTIVE, ENDED, DENIED, CANCELLED, EXPIRED = "pending", "active", "ended", "denied", "cancelled", "expired"
STATES = (PENDING, ACTIVE, ENDED, DENIED, CANCELLED, EXPIRED)
FINISHED = frozenset({ENDED, DENIED, CANCELLED, EXPIRED})
MAX_REASON = 500  # characters of a reason or a comment
ADMIN = "admin"  # the actor of a decision made through the admin API


def person_key(provider: str, subject: str) -> str:
    """Whose grant it is, unique across providers: a subject is unique within its provider only."""
    return f"{provider}\x00{subject}"


class GrantRefused(Exception):
    """A transition that may not happen: ``status`` 400 (bad input), 403 (not allowed) or 409 (too late)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Person:
    """Who asks or decides: an identity provider's user, as the session describes them now."""

    provider: str
    subject: str
    email: str | None = None
    groups: frozenset[str] = frozenset()
    mfa: bool = False

    @property
    def key(self) -> str:
        return person_key(self.provider, self.subject)

    @property
    def label(self) -> str:
        return self.email or self.subject


@dataclass(frozen=True, slots=True)
class Decision:
    """One approval or denial: by whom (a user's label, or ``admin``), when, with what comment."""

    by: str  # the decider's key (provider NUL subject), or ADMIN
    label: str  # their email or subject, for people
    at: float
    comment: str = ""

    def to_data(self) -> dict[str, Any]:
        return {"by": self.by, "label": self.label, "at": self.at, "comment": self.comment}

    @classmethod
    def from_data(cls, data: Any) -> Decision:
        return cls(str(data["by"]), str(data["label"]), float(data["at"]), str(data.get("comment", "")))


@dataclass(frozen=True, slots=True)
class GrantRequest:
    id: str
    route: str
    provider: str
    subject: str
    email: str | None
    reason: str
    duration: float  # seconds the grant runs once approved
    needed: int  # approvals needed (the rule's ``approvals`` when asked)
    created_at: float
    expires_at: float  # an unanswered request expires then
    state: str = PENDING
    approvals: tuple[Decision, ...] = ()
    denial: Decision | None = None
    starts_at: float | None = None
    ends_at: float | None = None
    ended_at: float | None = None  # when it ended, was cancelled or expired
    ended_by: str | None = None  # a revoker's label, the requester's (cancel), or "time"

    @property
    def requester(self) -> Person:
        return Person(self.provider, self.subject, self.email)

    @property
    def requester_label(self) -> str:
        return self.email or self.subject

    def state_at(self, now: float) -> str:
        """The state at ``now``: a pending request past its expiry is expired, an active grant past its end ended."""
        if self.state == PENDING and now >= self.expires_at:
            return EXPIRED
        if self.state == ACTIVE and self.ends_at is not None and now >= self.ends_at:
            return ENDED
        return self.state

    def active_at(self, now: float) -> bool:
        return self.state_at(now) == ACTIVE

    def settled(self, now: float) -> GrantRequest:
        """This request with its time-driven transition (expired, ended) written down."""
        state = self.state_at(now)
        if state == self.state:
            return self
        at = self.expires_at if state == EXPIRED else self.ends_at
        return dataclasses.replace(self, state=state, ended_at=at, ended_by="time")

    # --- transitions --------------------------------------------------------------------------

    def approve(self, approver: Person | None, terms: Grant | None, now: float, comment: str = "") -> GrantRequest:
        """One approval (``approver`` None: an admin, which completes the request whatever N is)."""
        self._pending(now, "approved")
        comment = check_text(comment, "comment")
        if approver is None:
            decision = Decision(ADMIN, ADMIN, now, comment)
            return self._start(decision, now)
        self._may_decide(approver, terms)
        if any(made.by == approver.key for made in self.approvals):
            raise GrantRefused(409, "already-approved", "You have approved this request already; it needs "
                                                        "another approver.")
        decision = Decision(approver.key, approver.label, now, comment)
        if len(self.approvals) + 1 >= self.needed:
            return self._start(decision, now)
        return dataclasses.replace(self, approvals=(*self.approvals, decision))

    def deny(self, approver: Person | None, terms: Grant | None, now: float, comment: str = "") -> GrantRequest:
        self._pending(now, "denied")
        comment = check_text(comment, "comment")
        if approver is not None:
            self._may_decide(approver, terms)
        decision = Decision(ADMIN, ADMIN, now, comment) if approver is None else \
            Decision(approver.key, approver.label, now, comment)
        return dataclasses.replace(self, state=DENIED, denial=decision, ended_at=now)

    def cancel(self, requester: Person, now: float) -> GrantRequest:
        if requester.key != self.requester.key:
            raise GrantRefused(403, "not-yours", "Only the person who asked can cancel a request.")
        self._pending(now, "cancelled")
        return dataclasses.replace(self, state=CANCELLED, ended_at=now, ended_by=requester.label)

    def revoke(self, approver: Person | None, terms: Grant | None, now: float, comment: str = "") -> GrantRequest:
        """End an active grant early: an approver of the route's rule, or an admin (``approver`` None)."""
        state = self.state_at(now)
        if state != ACTIVE:
            raise GrantRefused(409, "not-active", f"This grant is {state}, not active: there is nothing to end.")
        check_text(comment, "comment")
        if approver is not None:
            self._may_decide(approver, terms, own_ok=True)  # ending one's own access early is fine
        return dataclasses.replace(self, state=ENDED, ended_at=now, ended_by=ADMIN if approver is None
                                   else approver.label)

    def may_decide(self, person: Person, terms: Grant | None) -> bool:
        try:
            self._may_decide(person, terms)
        except GrantRefused:
            return False
        return True

    def _may_decide(self, person: Person, terms: Grant | None, *, own_ok: bool = False) -> None:
        if terms is None:
            raise GrantRefused(409, "no-grant-rule", f"Route {self.route!r} no longer has a grant rule: its requests "
                                                     "cannot be decided.")
        if person.groups.isdisjoint(terms.approver_groups):
            raise GrantRefused(403, "not-an-approver", "You are not an approver of this application's access "
                                                       "requests.")
        if not own_ok and person.key == self.requester.key:
            # Separation of duties: nobody decides their own request.
            raise GrantRefused(403, "own-request", "Nobody may decide their own access request.")
        if terms.approval_mfa and not person.mfa:
            raise GrantRefused(403, "approval-mfa-required", "Deciding access requests for this application "
                                                             "needs a sign-in with a second factor.")

    def _pending(self, now: float, verb: str) -> None:
        state = self.state_at(now)
        if state != PENDING:
            raise GrantRefused(409, "not-pending", f"This request is {state}: it can no longer be {verb}.")

    def _start(self, decision: Decision, now: float) -> GrantRequest:
        return dataclasses.replace(self, state=ACTIVE, approvals=(*self.approvals, decision), starts_at=now,
                                   ends_at=now + self.duration)

    # --- records --------------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        data = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        data["approvals"] = [made.to_data() for made in self.approvals]
        data["denial"] = None if self.denial is None else self.denial.to_data()
        return orjson.dumps(data)

    @classmethod
    def from_bytes(cls, raw: bytes) -> GrantRequest | None:
        """The request in ``raw``, or None for anything this version cannot read."""
        try:
            data = orjson.loads(raw)
            data["approvals"] = tuple(Decision.from_data(made) for made in data["approvals"])
            denial = data.get("denial")
            data["denial"] = None if denial is None else Decision.from_data(denial)
            request = cls(**data)
        except (orjson.JSONDecodeError, TypeError, KeyError, ValueError):
            return None
        return request if request.state in STATES else None

    def summary(self, now: float) -> dict[str, Any]:
        """The request as webhooks, the admin API and the pages' JSON show it (Unix seconds)."""
        return {"id": self.id, "route": self.route, "requester": self.requester_label, "subject": self.subject,
                "provider": self.provider, "reason": self.reason, "duration_s": round(self.duration),
                "approvals": len(self.approvals), "approvals_needed": self.needed, "state": self.state_at(now),
                "created_at": int(self.created_at), "expires_at": int(self.expires_at),
                "starts_at": None if self.starts_at is None else int(self.starts_at),
                "ends_at": None if self.ends_at is None else int(self.ends_at),
                "approved_by": [made.label for made in self.approvals],
                "denied_by": None if self.denial is None else self.denial.label,
                "comments": [made.comment for made in (*self.approvals, *filter(None, [self.denial]))
                             if made.comment]}


def new_request(requester: Person, route: str, terms: Grant | None, reason: str, duration: float, now: float,
                ttl: float) -> GrantRequest:
    """A pending request, or GrantRefused (400) for a route without a grant rule or bad terms."""
    if terms is None:
        raise GrantRefused(400, "no-grant-rule", f"There is no application {route[:100]!r} that access can be "
                                                 "requested for.")
    reason = check_text(reason, "reason")
    if terms.reason_required and not reason:
        raise GrantRefused(400, "reason-required", "Say why you need access: a reason is required.")
    if not duration > 0:
        raise GrantRefused(400, "bad-duration", "The duration must be longer than 0s.")
    if duration > terms.max_duration:
        raise GrantRefused(400, "duration-too-long", f"The longest access that can be requested here is "
                                                     f"{format_duration(terms.max_duration)}.")
    return GrantRequest(id=secrets.token_hex(8), route=route, provider=requester.provider,
                        subject=requester.subject, email=requester.email, reason=reason, duration=duration,
                        needed=terms.approvals, created_at=now, expires_at=now + ttl)


def check_text(text: str, what: str) -> str:
    text = text.strip()
    if len(text) > MAX_REASON:
        raise GrantRefused(400, f"{what}-too-long", f"The {what} may be at most {MAX_REASON} characters.")
    if not text.isprintable():
        raise GrantRefused(400, f"bad-{what}", f"The {what} must be plain text on one line.")
    return text


def format_duration(seconds: float) -> str:
    """``4h``, ``1h30m``, ``20s``: a duration as the forms take it."""
    whole = int(seconds)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if whole >= size:
            parts.append(f"{whole // size}{unit}")
            whole %= size
    return "".join(parts) or "0s"

"""The policy rule models: one ``allow`` or ``deny`` rule and the requirements it holds.

A rule holds when every criterion in it holds; :mod:`ztproxy.policy.compile` turns each
field given into the criterion registered under its name (:mod:`ztproxy.policy.criteria`).
An entry may also name a policy defined under ``policies``.
This module imports no aiohttp.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, model_validator

from ztproxy.config.grants import GrantRequirement
from ztproxy.config.values import (
    WEEKDAYS,
    Cidr,
    ClaimValue,
    ClockTime,
    EmailDomain,
    MaxAge,
    Method,
    Model,
    Name,
    NonEmpty,
    OsVersion,
    PathPrefix,
    Platform,
    TimeZoneName,
    Weekday,
)

# Criteria that need a signed-in user (or a known device): never next to ``public: true``.
IDENTITY_CRITERIA = ("users", "email_domains", "groups", "claims", "mfa", "max_auth_age",
                      "max_session_age", "device", "max_risk", "grant")
# Criteria about a calling service (an access token's client, its scopes, a workload's SPIFFE
# ID): a route with a rule naming one accepts bearer tokens. Never in a rule about a person.
SERVICE_CRITERIA = ("services", "clients", "scopes", "sender_constrained")
# A SPIFFE ID (spiffe://trust-domain/path), with "*" for one path segment and a final "/**" for any rest.
_SPIFFE_PATTERN = r"^spiffe://[a-z0-9._-]+(/(\*|[A-Za-z0-9._~!$&'()+,;=:@%-]+))*(/\*\*)?$"


def _policy_reference(value: Any) -> Any:
    """An ``allow`` or ``deny`` entry may be the name of a policy instead of an inline rule."""
    return {"policy": value} if isinstance(value, str) else value


def _groups_list(value: Any) -> Any:
    """``groups: [a, b]`` is short for ``groups: {any_of: [a, b]}``."""
    return {"any_of": value} if isinstance(value, (list, tuple)) else value


def _claim_lists(value: Any) -> Any:
    """``claims: {dept: sales}`` is short for ``claims: {dept: [sales]}``."""
    if not isinstance(value, dict):
        return value
    return {key: item if isinstance(item, (list, tuple)) else [item] for key, item in value.items()}


def _scopes_list(value: Any) -> Any:
    """``scopes: [a, b]`` is short for ``scopes: {all_of: [a, b]}``: least privilege asks for each."""
    return {"all_of": value} if isinstance(value, (list, tuple)) else value


class ScopesRequirement(Model):
    """``all_of``: the token has every one of these scopes; ``any_of``: at least one of them."""

    all_of: tuple[Name, ...] = ()
    any_of: tuple[Name, ...] = ()

    @model_validator(mode="after")
    def _not_empty(self) -> ScopesRequirement:
        if not self.any_of and not self.all_of:
            raise ValueError("name at least one scope in all_of or any_of")
        return self


SpiffePattern = Annotated[str, Field(pattern=_SPIFFE_PATTERN, max_length=2048)]


class GroupsRequirement(Model):
    """``any_of``: at least one of these groups; ``all_of``: every one of them."""

    any_of: tuple[Name, ...] = ()
    all_of: tuple[Name, ...] = ()

    @model_validator(mode="after")
    def _not_empty(self) -> GroupsRequirement:
        if not self.any_of and not self.all_of:
            raise ValueError("name at least one group in any_of or all_of")
        return self


class DeviceRequirement(Model):
    """What the device making the request must be; every condition given must hold."""

    managed: bool = False
    disk_encrypted: bool = False
    # platform -> lowest version; other platforms fail. (noqa: pydantic copies mutable defaults, and
    # ruff sees Model as a pydantic model only in the file defining it.)
    min_os_version: dict[Platform, OsVersion] = {}  # noqa: RUF012
    max_posture_age: MaxAge = None
    min_score: int | None = Field(default=None, ge=0, le=100)
    owner_is_user: bool = False

    @model_validator(mode="after")
    def _not_empty(self) -> DeviceRequirement:
        if self.model_dump(exclude_defaults=True) == {}:
            raise ValueError("a device requirement needs at least one condition (e.g. managed: true)")
        return self


class TimeWindow(Model):
    """Days and hours in one time zone; an ``end`` before ``start`` runs past midnight."""

    days: Annotated[tuple[Weekday, ...], NonEmpty] = WEEKDAYS
    start: ClockTime
    end: ClockTime
    timezone: TimeZoneName = "UTC"

    @model_validator(mode="after")
    def _not_empty(self) -> TimeWindow:
        if self.start == self.end or {self.start, self.end} == {"00:00", "24:00"}:
            raise ValueError("start and end are the same time: leave time_window out for all day")
        return self


class Rule(Model):
    """One ``allow`` or ``deny`` rule: it holds when every criterion in it holds."""

    public: bool = False
    policy: str | None = None
    users: Annotated[tuple[Name, ...], NonEmpty] | None = None  # subjects or emails
    email_domains: Annotated[tuple[EmailDomain, ...], NonEmpty] | None = None
    groups: Annotated[GroupsRequirement | None, BeforeValidator(_groups_list)] = None
    claims: Annotated[Annotated[dict[str, Annotated[tuple[ClaimValue, ...], NonEmpty]], NonEmpty] | None,
                      BeforeValidator(_claim_lists)] = None
    mfa: bool = False
    max_auth_age: MaxAge = None
    max_session_age: MaxAge = None
    device: DeviceRequirement | None = None
    max_risk: Literal["low", "medium"] | None = None  # the session's risk level (ztproxy.risk)
    grant: GrantRequirement | None = None  # an approved, unexpired grant for the route (ztproxy.grants)
    methods: Annotated[tuple[Method, ...], NonEmpty] | None = None
    paths: Annotated[tuple[PathPrefix, ...], NonEmpty] | None = None
    source_cidrs: Annotated[tuple[Cidr, ...], NonEmpty] | None = None
    time_window: TimeWindow | None = None
    services: Annotated[tuple[SpiffePattern, ...], NonEmpty] | None = None  # workloads' SPIFFE IDs
    clients: Annotated[tuple[Name, ...], NonEmpty] | None = None  # OAuth client_id of an access token
    scopes: Annotated[ScopesRequirement | None, BeforeValidator(_scopes_list)] = None
    sender_constrained: bool = False  # the service's token is bound to it (DPoP, mTLS); not a plain bearer

    @model_validator(mode="after")
    def _coherent(self) -> Rule:
        given = set(self.model_dump(exclude_defaults=True))
        # An empty rule would hold for everyone: default deny means a rule must say something.
        if not given:
            raise ValueError("an allow rule needs at least one criterion (e.g. public: true)")
        if self.policy is not None and given != {"policy"}:
            raise ValueError("a policy reference stands alone; write it as its own allow entry")
        mixed = [name for name in IDENTITY_CRITERIA if name in given]
        services = [name for name in SERVICE_CRITERIA if name in given]
        if self.public and (mixed or services):
            raise ValueError(f"public: true lets anyone in without signing in, so it cannot be combined with "
                             f"{', '.join(mixed + services)}; drop public or those criteria")
        if mixed and services:
            # A person is never a service and a service never a person: such a rule could never hold.
            raise ValueError(f"a rule is about a person ({', '.join(mixed)}) or about a service "
                             f"({', '.join(services)}), never both: write two allow rules")
        return self

    @property
    def names_services(self) -> bool:
        return self.services is not None or self.clients is not None or self.scopes is not None \
            or self.sender_constrained


RuleEntry = Annotated[Rule, BeforeValidator(_policy_reference)]

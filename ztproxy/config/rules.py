"""The policy rule models: one ``allow`` or ``deny`` rule and the requirements it holds.

A rule holds when every criterion in it holds; :mod:`ztproxy.policy.compile` turns each
field given into the criterion registered under its name (:mod:`ztproxy.policy.criteria`).
An entry may also name a policy defined under ``policies``.
This module imports no aiohttp.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, model_validator

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
                      "max_session_age", "device", "max_risk")


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
    methods: Annotated[tuple[Method, ...], NonEmpty] | None = None
    paths: Annotated[tuple[PathPrefix, ...], NonEmpty] | None = None
    source_cidrs: Annotated[tuple[Cidr, ...], NonEmpty] | None = None
    time_window: TimeWindow | None = None

    @model_validator(mode="after")
    def _coherent(self) -> Rule:
        given = set(self.model_dump(exclude_defaults=True))
        # An empty rule would hold for everyone: default deny means a rule must say something.
        if not given:
            raise ValueError("an allow rule needs at least one criterion (e.g. public: true)")
        if self.policy is not None and given != {"policy"}:
            raise ValueError("a policy reference stands alone; write it as its own allow entry")
        mixed = [name for name in IDENTITY_CRITERIA if name in given]
        if self.public and mixed:
            raise ValueError(f"public: true lets anyone in without signing in, so it cannot be combined with "
                             f"{', '.join(mixed)}; drop public or those criteria")
        return self


RuleEntry = Annotated[Rule, BeforeValidator(_policy_reference)]

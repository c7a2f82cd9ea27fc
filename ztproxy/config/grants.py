"""Just-in-time access: the ``grant`` rule criterion's terms, and the ``grants`` section.

A rule with ``grant: {approvers: {groups: [...]}, max_duration: 4h, ...}`` holds only while
the signed-in user has an approved, unexpired grant for the route; ``grants:`` bounds the
requests (how many pending per user, how long they wait) and lists the webhooks told about
each step. :mod:`ztproxy.grants` does the rest. This module imports no aiohttp.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from ztproxy.config.values import Duration, HttpUrl, Model, Name, NonEmpty

DEFAULT_MAX_DURATION = 4 * 3600.0
DEFAULT_MAX_PENDING_PER_USER = 5
DEFAULT_REQUEST_TTL = 24 * 3600.0
DEFAULT_RETENTION = 7 * 86400.0
MIN_WEBHOOK_SECRET_LENGTH = 16


class Approvers(Model):
    """Who may decide requests: members of any of these groups."""

    groups: Annotated[tuple[Name, ...], NonEmpty]


class GrantRequirement(Model):
    """The ``grant`` criterion: the terms on which a grant for the route is requested and approved."""

    approvers: Approvers
    max_duration: Duration = Field(default=DEFAULT_MAX_DURATION, gt=0)  # the longest a grant may run
    reason: Literal["required", "optional"] = "required"
    approvals: int = Field(default=1, ge=1, le=10)  # distinct approvers needed
    approval_mfa: bool = True  # approvers decide signed in with a second factor


class WebhookConfig(Model):
    """Where each step of a request is posted, for the approver groups it serves."""

    url: HttpUrl
    # The approver groups whose routes' requests this webhook hears of; empty: every request.
    groups: tuple[Name, ...] = ()
    # The HMAC-SHA256 key of X-Ztproxy-Signature (better: secret_file).
    secret: str | None = None
    format: Literal["json", "slack"] = "json"
    timeout: Duration = Field(default=5.0, gt=0)

    @model_validator(mode="after")
    def _check_secret(self) -> WebhookConfig:
        # The value itself is never repeated in a message: it is a secret.
        if self.format == "json" and self.secret is None:
            raise ValueError("a json webhook is signed: give secret_file (a file holding a random secret)")
        if self.secret is not None and len(self.secret) < MIN_WEBHOOK_SECRET_LENGTH:
            raise ValueError(f"the webhook secret is too short: at least {MIN_WEBHOOK_SECRET_LENGTH} characters, "
                             "e.g. the output of `openssl rand -hex 32`")
        return self


class GrantsConfig(Model):
    max_pending_per_user: int = Field(default=DEFAULT_MAX_PENDING_PER_USER, ge=1, le=100)
    request_ttl: Duration = Field(default=DEFAULT_REQUEST_TTL, gt=0)  # an unanswered request expires then
    retention: Duration = Field(default=DEFAULT_RETENTION, gt=0)  # ended requests are kept this long, then forgotten
    webhooks: tuple[WebhookConfig, ...] = ()


def conflicting_terms(routes: list[tuple[int, dict[Any, Any]]],
                      policies: dict[Any, Any]) -> Iterator[tuple[tuple[Any, ...], str]]:
    """(YAML path, message) for each route whose allow rules give grants on different terms.

    A route's requests are made and decided on one set of terms (those of its first grant
    rule): a second, different one would be silently ignored. Raw YAML data, as
    :mod:`ztproxy.config.checks` reads it; policy references are followed (they do not nest).
    """
    for index, route in routes:
        found: list[Any] = []
        allow = route.get("allow")
        for position, entry in enumerate(allow if isinstance(allow, list) else []):
            name = entry if isinstance(entry, str) else entry.get("policy") if isinstance(entry, dict) else None
            named = policies.get(name) if isinstance(name, str) else [entry]
            for rule in named if isinstance(named, list) else []:
                if isinstance(rule, dict) and rule.get("grant") is not None and rule["grant"] not in found:
                    found.append(rule["grant"])
                    if len(found) == 2:
                        yield (("routes", index, "allow", position),
                               f"route {route.get('name', index)!r} has grant rules with different terms; its "
                               "requests follow one set of terms: give every grant rule of a route the same "
                               "grant (approvers, max_duration, reason, approvals, approval_mfa)")

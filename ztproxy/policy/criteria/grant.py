"""``grant: {approvers: ..., max_duration: ...}``: the user holds an approved, unexpired grant for the route.

The facts say whether they do (``RequestFacts.granted``, looked up before evaluation by
:mod:`ztproxy.grants`); the criterion also carries the terms on which such a grant is asked
for and approved, which the access pages read from the route's compiled rules. A grant only
lifts this criterion: the rule's other criteria (groups, MFA, device) must hold all the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ztproxy.config.grants import GrantRequirement
from ztproxy.policy.criteria.registry import register
from ztproxy.policy.model import RequestFacts, RoutePolicy
from ztproxy.policy.reasons import AUTHENTICATION_REQUIRED, GRANT_REQUIRED


@dataclass(frozen=True, slots=True)
class Grant:
    name: ClassVar[str] = "grant"
    approver_groups: frozenset[str]
    max_duration: float  # seconds
    reason_required: bool
    approvals: int  # distinct approvers needed
    approval_mfa: bool

    @classmethod
    def of(cls, requirement: GrantRequirement) -> Grant:
        return cls(approver_groups=frozenset(requirement.approvers.groups), max_duration=requirement.max_duration,
                   reason_required=requirement.reason == "required", approvals=requirement.approvals,
                   approval_mfa=requirement.approval_mfa)

    def __call__(self, facts: RequestFacts) -> str | None:
        if facts.identity is None:
            return AUTHENTICATION_REQUIRED
        return None if facts.granted else GRANT_REQUIRED


def grant_terms(policy: RoutePolicy) -> Grant | None:
    """The terms of a route's grants: those of its first allow rule with a ``grant``; None without one."""
    for rule in policy.allow:
        for criterion in rule.criteria:
            if isinstance(criterion, Grant):
                return criterion
    return None


register(Grant.name, Grant.of, {GRANT_REQUIRED: "This application is opened by an approved access request: "
                                                "request access, and use it once an approver has approved it."})

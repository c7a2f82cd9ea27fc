"""``sender_constrained: true``: the service's token is bound to its sender (DPoP or a certificate)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ztproxy.policy.criteria.registry import register
from ztproxy.policy.model import RequestFacts
from ztproxy.policy.reasons import SENDER_CONSTRAINT_FAILED, SERVICE_REQUIRED


@dataclass(frozen=True, slots=True)
class SenderConstrained:
    name: ClassVar[str] = "sender_constrained"

    def __call__(self, facts: RequestFacts) -> str | None:
        service = facts.service
        if service is None:
            return SERVICE_REQUIRED
        # A workload's own certificate is bound by TLS itself; a plain bearer token is not bound.
        return None if service.binding != "none" else SENDER_CONSTRAINT_FAILED


register(SenderConstrained.name, lambda _: SenderConstrained(), {})

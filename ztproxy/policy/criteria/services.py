"""``services``: the calling workload's SPIFFE ID matches one of the patterns.

A pattern is a SPIFFE ID whose path segments may be ``*`` (any one segment), ending
optionally in ``/**`` (any number of further segments, none included). Trust domains
and segments compare exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ztproxy.policy.criteria.registry import register
from ztproxy.policy.model import RequestFacts
from ztproxy.policy.reasons import SERVICE_NOT_ALLOWED, SERVICE_REQUIRED

_SCHEME = "spiffe://"


def spiffe_matches(pattern: str, spiffe_id: str) -> bool:
    if not pattern.startswith(_SCHEME) or not spiffe_id.startswith(_SCHEME):
        return False
    want = pattern[len(_SCHEME):].split("/")
    have = spiffe_id[len(_SCHEME):].split("/")
    rest = want[-1] == "**"
    if rest:
        want = want[:-1]
        if len(have) < len(want):
            return False
        have = have[:len(want)]
    if len(want) != len(have) or want[0] != have[0]:  # the trust domain, exactly
        return False
    return all(w == h or (w == "*" and h) for w, h in zip(want[1:], have[1:], strict=True))


@dataclass(frozen=True, slots=True)
class Services:
    name: ClassVar[str] = "services"
    patterns: tuple[str, ...]

    @classmethod
    def of(cls, entries: tuple[str, ...]) -> Services:
        return cls(entries)

    def __call__(self, facts: RequestFacts) -> str | None:
        service = facts.service
        if service is None:
            return SERVICE_REQUIRED
        if service.spiffe_id is not None and any(spiffe_matches(p, service.spiffe_id) for p in self.patterns):
            return None
        return SERVICE_NOT_ALLOWED


register(Services.name, Services.of, {SERVICE_NOT_ALLOWED: "This service may not call this application."})

"""``claims``: each listed claim has one of the accepted values (any overlap for a list claim)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from ztproxy.policy.criteria.registry import register
from ztproxy.policy.model import RequestFacts
from ztproxy.policy.reasons import AUTHENTICATION_REQUIRED, CLAIM_MISMATCH

ClaimKey = tuple[bool, str | int]


def claim_key(value: Any) -> ClaimKey | None:
    """A value as compared: true must not equal 1 (``True == 1`` in Python); None if not a scalar."""
    if isinstance(value, (str, int)):
        return isinstance(value, bool), value
    return None


@dataclass(frozen=True, slots=True)
class Claims:
    name: ClassVar[str] = "claims"
    accepted: Mapping[str, frozenset[ClaimKey]]

    @classmethod
    def of(cls, claims: Mapping[str, tuple[str | int | bool, ...]]) -> Claims:
        return cls({claim: frozenset(filter(None, map(claim_key, values))) for claim, values in claims.items()})

    def __call__(self, facts: RequestFacts) -> str | None:
        identity = facts.identity
        if identity is None:
            return AUTHENTICATION_REQUIRED
        for claim, accepted in self.accepted.items():
            value = identity.claims.get(claim)
            values = value if isinstance(value, (list, tuple, frozenset, set)) else (value,)
            if not any(claim_key(item) in accepted for item in values):
                return CLAIM_MISMATCH
        return None


register(Claims.name, Claims.of, {CLAIM_MISMATCH: "Your account lacks an attribute this application requires."})

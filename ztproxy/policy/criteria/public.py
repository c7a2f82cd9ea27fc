"""``public: true``: anyone, signed in or not."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ztproxy.policy.criteria.registry import register
from ztproxy.policy.model import RequestFacts
from ztproxy.policy.reasons import PUBLIC


@dataclass(frozen=True, slots=True)
class Public:
    name: ClassVar[str] = PUBLIC  # also the reason of the allow

    def __call__(self, facts: RequestFacts) -> str | None:
        return None


register(Public.name, lambda _: Public(), {})

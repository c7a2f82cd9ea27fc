"""``public: true``: anyone, signed in or not."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ztproxy.policy.model import RequestFacts


@dataclass(frozen=True, slots=True)
class Public:
    name: ClassVar[str] = "public"

    def __call__(self, facts: RequestFacts) -> str | None:
        return None

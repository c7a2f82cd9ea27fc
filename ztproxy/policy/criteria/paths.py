"""``paths``: the canonical path is under one of the prefixes, on segment boundaries."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ztproxy.policy.criteria.registry import register
from ztproxy.policy.model import RequestFacts
from ztproxy.policy.reasons import PATH_NOT_ALLOWED


def under(path: str, prefix: str) -> bool:
    """Like route prefixes: "/api" matches "/api" and "/api/x", never "/apix"."""
    if not path.startswith(prefix):
        return False
    return len(path) == len(prefix) or prefix.endswith("/") or path[len(prefix)] == "/"


@dataclass(frozen=True, slots=True)
class Paths:
    name: ClassVar[str] = "paths"
    prefixes: tuple[str, ...]

    def __call__(self, facts: RequestFacts) -> str | None:
        # The path is the canonical one routing matched and the upstream receives, so no
        # "/public/../admin" can pass for "/public".
        path = facts.path
        return None if any(under(path, prefix) for prefix in self.prefixes) else PATH_NOT_ALLOWED


register(Paths.name, Paths, {PATH_NOT_ALLOWED: "This part of the application is not open to you."})

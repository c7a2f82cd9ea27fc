"""``methods``: the request method is one of those listed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ztproxy.policy.criteria.registry import register
from ztproxy.policy.model import RequestFacts
from ztproxy.policy.reasons import METHOD_NOT_ALLOWED


@dataclass(frozen=True, slots=True)
class Methods:
    name: ClassVar[str] = "methods"
    methods: frozenset[str]  # uppercase (the schema normalises them)

    @classmethod
    def of(cls, methods: tuple[str, ...]) -> Methods:
        return cls(frozenset(methods))

    def __call__(self, facts: RequestFacts) -> str | None:
        # RFC 9110 9.1: methods are case-sensitive, so "get" is not GET.
        return None if facts.method in self.methods else METHOD_NOT_ALLOWED


register(Methods.name, Methods.of, {METHOD_NOT_ALLOWED: "This kind of request is not allowed here."})

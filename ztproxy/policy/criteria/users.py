"""``users``: the subject, or the email (case-insensitively), is one of those listed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ztproxy.policy.criteria._text import fold
from ztproxy.policy.criteria.registry import register
from ztproxy.policy.model import RequestFacts
from ztproxy.policy.reasons import AUTHENTICATION_REQUIRED, USER_NOT_ALLOWED


@dataclass(frozen=True, slots=True)
class Users:
    name: ClassVar[str] = "users"
    subjects: frozenset[str]  # exact, as the IdP gives them
    emails: frozenset[str]  # folded

    @classmethod
    def of(cls, entries: tuple[str, ...]) -> Users:
        return cls(frozenset(entries), frozenset(fold(entry) for entry in entries if "@" in entry))

    def __call__(self, facts: RequestFacts) -> str | None:
        identity = facts.identity
        if identity is None:
            return AUTHENTICATION_REQUIRED
        if identity.subject in self.subjects:
            return None
        if identity.email is not None and fold(identity.email) in self.emails:
            return None
        return USER_NOT_ALLOWED


register(Users.name, Users.of, {USER_NOT_ALLOWED: "Your account is not on the list of users of this application."})

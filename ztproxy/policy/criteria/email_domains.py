"""``email_domains``: the email's domain is exactly one of those listed (no subdomains)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ztproxy.policy.criteria._text import email_domain, fold
from ztproxy.policy.criteria.registry import register
from ztproxy.policy.model import RequestFacts
from ztproxy.policy.reasons import AUTHENTICATION_REQUIRED, EMAIL_DOMAIN_NOT_ALLOWED


@dataclass(frozen=True, slots=True)
class EmailDomains:
    name: ClassVar[str] = "email_domains"
    domains: frozenset[str]  # folded, without a trailing dot

    @classmethod
    def of(cls, domains: tuple[str, ...]) -> EmailDomains:
        return cls(frozenset(fold(domain).rstrip(".") for domain in domains))

    def __call__(self, facts: RequestFacts) -> str | None:
        identity = facts.identity
        if identity is None:
            return AUTHENTICATION_REQUIRED
        # Equality on the part after the last "@": a suffix test would let evilcorp.example
        # pass for corp.example. RFC 5321 2.4: domains are case-insensitive.
        if identity.email is not None and email_domain(identity.email) in self.domains:
            return None
        return EMAIL_DOMAIN_NOT_ALLOWED


register(EmailDomains.name, EmailDomains.of,
         {EMAIL_DOMAIN_NOT_ALLOWED: "Your email address is not in a domain this application accepts."})

"""``clients``: the calling service's access token was issued to one of these OAuth clients."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ztproxy.policy.criteria.registry import register
from ztproxy.policy.model import RequestFacts
from ztproxy.policy.reasons import CLIENT_NOT_ALLOWED, SERVICE_REQUIRED


@dataclass(frozen=True, slots=True)
class Clients:
    name: ClassVar[str] = "clients"
    client_ids: frozenset[str]  # exact, as the token's client_id gives them

    @classmethod
    def of(cls, entries: tuple[str, ...]) -> Clients:
        return cls(frozenset(entries))

    def __call__(self, facts: RequestFacts) -> str | None:
        service = facts.service
        if service is None:
            return SERVICE_REQUIRED
        return None if service.client_id in self.client_ids else CLIENT_NOT_ALLOWED


register(Clients.name, Clients.of, {
    SERVICE_REQUIRED: "This application is for services calling with an access token or a workload certificate.",
    CLIENT_NOT_ALLOWED: "The client this access token was issued to may not call this application.",
})

"""``source_cidrs``: the client address is in one of the networks."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import ClassVar

from ztproxy.policy.criteria.registry import register
from ztproxy.policy.model import RequestFacts
from ztproxy.policy.reasons import SOURCE_NOT_ALLOWED

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class SourceCidrs:
    name: ClassVar[str] = "source_cidrs"
    networks: tuple[Network, ...]

    @classmethod
    def of(cls, cidrs: tuple[str, ...]) -> SourceCidrs:
        return cls(tuple(ipaddress.ip_network(cidr, strict=False) for cidr in cidrs))

    def __call__(self, facts: RequestFacts) -> str | None:
        try:
            address = ipaddress.ip_address(facts.client_ip)
        except ValueError:
            return SOURCE_NOT_ALLOWED
        # A dual-stack socket reports IPv4 clients as ::ffff:a.b.c.d (RFC 4291 2.5.5.2).
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if any(address in network for network in self.networks):
            return None
        return SOURCE_NOT_ALLOWED


register(SourceCidrs.name, SourceCidrs.of,
         {SOURCE_NOT_ALLOWED: "This application cannot be reached from your network."})

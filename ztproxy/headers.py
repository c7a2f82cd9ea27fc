"""Header hygiene: what crosses the proxy in each direction, and what never does.

Pure functions over header pairs (no aiohttp): removing hop-by-hop headers and those
named in ``Connection`` (RFC 9110 7.6.1), removing every client-sent ``X-Ztproxy-*``
header whatever its case or ``_`` spelling (only the proxy may assert identity), and
the ``X-Forwarded-*`` family, trusted from ``trusted_proxies`` only.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from multidict import CIMultiDict

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# RFC 9110 7.6.1 and RFC 9112 9.6; Proxy-Connection is a non-standard relic clients still send.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
    "te", "trailer", "transfer-encoding", "upgrade",
})
# Set by the proxy from what it saw itself; client values only count from trusted proxies.
FORWARDING = frozenset({"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "forwarded", "x-real-ip"})
# The proxy answers Expect itself (after authorization); it never travels upstream.
PROXY_HANDLED = frozenset({"expect", "x-request-id"})
IDENTITY_PREFIX = "x-ztproxy"


def is_identity_header(name: str) -> bool:
    """True for any spelling of ``X-Ztproxy-*``: case-insensitive, ``_`` same as ``-``.

    Some upstream frameworks (CGI/WSGI) fold ``_`` into ``-``, so ``X_Ztproxy_User``
    would otherwise arrive as ``X-Ztproxy-User``.
    """
    return name.lower().replace("_", "-").startswith(IDENTITY_PREFIX)


def connection_tokens(values: Iterable[str]) -> set[str]:
    """Header names listed in ``Connection`` (RFC 9110 7.6.1), lowercased."""
    return {token.strip().lower() for value in values for token in value.split(",") if token.strip()}


def _droppable(headers: Sequence[tuple[str, str]]) -> frozenset[str]:
    listed = connection_tokens(value for name, value in headers if name.lower() == "connection")
    return HOP_BY_HOP | listed


@dataclass(frozen=True, slots=True)
class ForwardedFor:
    """Who the client is, as far as the proxy can trust the chain in front of it."""

    client_ip: str
    peer_trusted: bool
    chain: str  # the X-Forwarded-For value to send upstream


def parse_networks(cidrs: Iterable[str]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(cidr, strict=False) for cidr in cidrs)


def _is_trusted(address: str, trusted: Sequence[IPNetwork]) -> bool:
    if not trusted:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in trusted)


def forwarded_for(peer: str, client_chain: Sequence[str], trusted: Sequence[IPNetwork]) -> ForwardedFor:
    """Work out the client address and the X-Forwarded-For chain to pass on.

    Client-sent X-Forwarded-For is honoured only when the direct peer is a trusted
    proxy; the client is then the right-most address that is not itself trusted.
    """
    if not _is_trusted(peer, trusted):
        return ForwardedFor(client_ip=peer, peer_trusted=False, chain=peer)
    hops = [hop.strip() for value in client_chain for hop in value.split(",") if hop.strip()]
    client = peer
    for hop in reversed(hops):
        client = hop
        if not _is_trusted(hop, trusted):
            break
    chain = ", ".join([*hops, peer])
    return ForwardedFor(client_ip=client, peer_trusted=True, chain=chain)


def upstream_request_headers(
    headers: Sequence[tuple[str, str]],
    *,
    forwarded: ForwardedFor,
    proto: str,
    host: str,
    request_id: str,
    upstream_host: str | None,
) -> CIMultiDict[str]:
    """The headers to send upstream for a client request.

    ``upstream_host`` replaces ``Host`` unless it is None (route ``preserve_host``).
    Repeated headers keep their order.
    """
    drop = _droppable(headers)
    out: CIMultiDict[str] = CIMultiDict()
    client_forwarding: dict[str, str] = {}
    for name, value in headers:
        lower = name.lower()
        if lower in drop or lower in PROXY_HANDLED or is_identity_header(lower):
            continue
        if lower in FORWARDING:
            if forwarded.peer_trusted:
                client_forwarding.setdefault(lower, value)
                if lower in ("forwarded", "x-real-ip"):
                    out.add(name, value)
            continue
        if lower == "host" and upstream_host is not None:
            continue
        out.add(name, value)
    if upstream_host is not None:
        out["Host"] = upstream_host
    out["X-Forwarded-For"] = forwarded.chain
    out["X-Forwarded-Proto"] = client_forwarding.get("x-forwarded-proto", proto)
    out["X-Forwarded-Host"] = client_forwarding.get("x-forwarded-host", host)
    out["X-Request-Id"] = request_id
    return out


def downstream_response_headers(headers: Sequence[tuple[str, str]]) -> CIMultiDict[str]:
    """The upstream's response headers as the client may see them (Set-Cookie etc. kept)."""
    drop = _droppable(headers)
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in headers:
        if name.lower() not in drop:
            out.add(name, value)
    return out

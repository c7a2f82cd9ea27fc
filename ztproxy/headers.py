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

from multidict import CIMultiDict, MultiMapping

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# A multidict (copied in C, the fast path) or header pairs in order.
Headers = MultiMapping[str] | Iterable[tuple[str, str]]

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
_IDENTITY_LEN = len(IDENTITY_PREFIX)


def is_identity_header(name: str) -> bool:
    """True for any spelling of ``X-Ztproxy-*``: case-insensitive, ``_`` same as ``-``.

    Some upstream frameworks (CGI/WSGI) fold ``_`` into ``-``, so ``X_Ztproxy_User``
    would otherwise arrive as ``X-Ztproxy-User``.
    """
    return name[:_IDENTITY_LEN].lower().replace("_", "-") == IDENTITY_PREFIX


def connection_tokens(values: Iterable[str]) -> set[str]:
    """Header names listed in ``Connection`` (RFC 9110 7.6.1), lowercased."""
    return {token.strip().lower() for value in values for token in value.split(",") if token.strip()}


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
    headers: Headers,
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
    out: CIMultiDict[str] = CIMultiDict(headers)
    client_proto = client_host = None
    if forwarded.peer_trusted:
        client_proto = out.get("X-Forwarded-Proto")
        client_host = out.get("X-Forwarded-Host")
        remove = _remove_always
    else:
        remove = _remove_untrusted
    _strip(out, remove)
    if upstream_host is not None:
        out["Host"] = upstream_host
    out["X-Forwarded-For"] = forwarded.chain
    out["X-Forwarded-Proto"] = client_proto or proto
    out["X-Forwarded-Host"] = client_host or host
    out["X-Request-Id"] = request_id
    return out


def downstream_response_headers(headers: Headers) -> CIMultiDict[str]:
    """The upstream's response headers as the client may see them (Set-Cookie etc. kept)."""
    out: CIMultiDict[str] = CIMultiDict(headers)
    _strip(out, HOP_BY_HOP, identity=False)
    return out


# Copy-then-remove is several times faster than filtering header by header in Python.
_remove_always = HOP_BY_HOP | PROXY_HANDLED | {"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"}
_remove_untrusted = _remove_always | FORWARDING


def _strip(out: CIMultiDict[str], remove: frozenset[str], *, identity: bool = True) -> None:
    # One pass over the (few) headers present beats a popall per name that might be.
    doomed = [name for name in out
              if (lower := name.lower()) in remove
              or (identity and lower[:_IDENTITY_LEN].replace("_", "-") == IDENTITY_PREFIX)]
    if "Connection" in out:
        doomed.extend(connection_tokens(out.getall("Connection")))
    for name in doomed:
        out.popall(name, None)

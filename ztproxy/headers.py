"""Header hygiene: what crosses the proxy in each direction, and what never does.

Pure functions over header pairs (no aiohttp): removing hop-by-hop headers and those
named in ``Connection`` (RFC 9110 7.6.1), removing every client-sent header that names a
header the proxy owns or relies on *in any spelling*, and the ``X-Forwarded-*`` family,
trusted from ``trusted_proxies`` only.

"Any spelling": a name is compared after lowercasing it and reading every character that
is not a letter or digit as ``-`` (``fold_name``), because CGI, WSGI, PHP and several app
frameworks fold ``X_Ztproxy_User`` or ``X.Ztproxy.User`` into the variable that
``X-Ztproxy-User`` sets. ``HeaderRules`` holds what the configuration adds (the signed
posture header, every route's ``claim_headers``) and ``server.headers_with_separators``.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from multidict import CIMultiDict, MultiMapping

from ztproxy.memo import Memo

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
FORWARDED_PREFIX = "x-forwarded-"
# Framing and routing names the proxy relies on as they are spelled: a client's other spelling of
# one is a smuggling attempt on whatever folds it back (RFC 9112 6.3, CGI's CONTENT_LENGTH).
# "proxy" is httpoxy (CVE-2016-5385): CGI turns it into HTTP_PROXY, the app's outbound proxy.
RELIED_ON = HOP_BY_HOP | FORWARDING | PROXY_HANDLED | frozenset({"host", "content-length", "proxy"})

# How ``server.headers_with_separators`` treats a header name with "_" or "." in it.
DROP_PROTECTED = "drop-protected"  # only when it is another spelling of a name the proxy owns or relies on
DROP_ALL = "drop-all"  # always dropped, as nginx does by default
REJECT = "reject"  # the request is refused (400)
SEPARATOR_POLICIES = (DROP_PROTECTED, DROP_ALL, REJECT)

# A header name's verdict, worked out once per name as sent (``HeaderRules.verdict``).
_KEEP, _DROP, _DROP_UNTRUSTED = 0, 1, 2
_REFUSED = 4  # a bit on top of the verdict: ``separators: reject`` refuses the request
_VERDICTS_LIMIT = 4096
# Removal plans are remembered per sequence of header names (a client sends the same names in
# the same order request after request), for sequences up to these sizes: a flood of long,
# distinct sequences is judged name by name and costs no memory.
_PLANS_LIMIT = 1024
_PLAN_MAX_NAMES = 64
_PLAN_MAX_CHARS = 2048


def fold_name(name: str) -> str:
    """``name`` lowercased, every character that is not an ASCII letter or digit read as ``-``."""
    lower = name.lower()
    if lower.isascii() and lower.replace("-", "").isalnum():
        return lower  # the common case: nothing to fold
    return "".join(c if c.isascii() and c.isalnum() else "-" for c in lower)


def is_identity_header(name: str) -> bool:
    """True for any spelling of ``X-Ztproxy-*``: case-insensitive, any separator read as ``-``.

    CGI/WSGI servers and some frameworks fold ``_`` (and PHP ``.``) into ``-``, so
    ``X_Ztproxy_User`` would otherwise arrive as ``X-Ztproxy-User``.
    """
    return fold_name(name).startswith(IDENTITY_PREFIX)


@dataclass(frozen=True)
class HeaderRules:
    """Which client request headers never reach the upstream, built once from the configuration.

    ``owned``: folded names the configuration gives the proxy (the signed posture header,
    every route's ``claim_headers``); with ``X-Ztproxy-*`` they are dropped in every spelling.
    Framing, hop-by-hop and forwarding names are dropped in every spelling but their own.
    ``separators`` says what happens to any other name with ``_`` or ``.`` in it.
    """

    owned: frozenset[str] = frozenset()
    separators: str = DROP_PROTECTED
    # name as sent -> verdict: header names repeat from request to request (bounded, see Memo).
    _verdicts: Memo[str, int] = field(default_factory=lambda: Memo(_VERDICTS_LIMIT), compare=False, repr=False)
    # The removals for each sequence of names, from an untrusted peer and from a trusted proxy.
    _plans: RemovalPlans = field(init=False, compare=False, repr=False)
    _plans_trusted: RemovalPlans = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        # A frozen dataclass sets what it derives through object.__setattr__ (dataclasses docs).
        object.__setattr__(self, "_plans", RemovalPlans(lambda name: self._dropped(name, peer_trusted=False)))
        object.__setattr__(self, "_plans_trusted", RemovalPlans(lambda name: self._dropped(name, peer_trusted=True)))

    def _protected(self, folded: str) -> bool:
        return is_identity_header(folded) or folded in self.owned

    def _relied_on(self, folded: str) -> bool:
        return folded in RELIED_ON or folded.startswith((FORWARDED_PREFIX, "proxy-"))

    def verdict(self, name: str) -> int:
        """What happens to a client header called ``name``; ``_verdicts`` remembers it per name as sent."""
        lower = name.lower()
        folded = fold_name(lower)
        verdict = self._kept_or_dropped(name, lower, folded)
        return verdict | _REFUSED if self._refuses(name, lower, folded) else verdict

    def _kept_or_dropped(self, name: str, lower: str, folded: str) -> int:
        if self._protected(folded) or lower in _ALWAYS_REMOVED or folded.startswith("proxy-") or folded == "proxy":
            return _DROP
        if folded != lower and (self._relied_on(folded) or (self.separators != DROP_PROTECTED and _separated(name))):
            return _DROP
        if folded in FORWARDING or folded.startswith(FORWARDED_PREFIX):
            return _DROP_UNTRUSTED  # X-Forwarded-Port, Forwarded, X-Real-IP...: only a trusted proxy may say
        return _KEEP

    def _refuses(self, name: str, lower: str, folded: str) -> bool:
        return self.separators == REJECT and (
            _separated(name) or (folded != lower and (self._protected(folded) or self._relied_on(folded))))

    def _verdict_of(self, name: str) -> int:
        verdict = self._verdicts.get(name)
        return self._verdicts.remember(name, self.verdict(name)) if verdict is None else verdict

    def refused(self, name: str) -> bool:
        """True when ``name`` gets the request refused (``separators: reject``): "_" or "." in
        it, or another spelling of a name the proxy owns or relies on."""
        return self.separators == REJECT and self._verdict_of(name) & _REFUSED != 0

    def first_refused(self, names: Iterable[str]) -> str | None:
        """The first of ``names`` that gets the request refused (see ``refused``), if any."""
        if self.separators == REJECT:
            for name in names:
                if self._verdict_of(name) & _REFUSED:
                    return name
        return None

    def _dropped(self, name: str, *, peer_trusted: bool) -> bool:
        verdict = self._verdict_of(name) & ~_REFUSED  # refused names are dropped too, had intake let one by
        return verdict == _DROP or (verdict == _DROP_UNTRUSTED and not peer_trusted)

    def strip(self, out: CIMultiDict[str], *, peer_trusted: bool) -> None:
        """Remove from ``out`` every header the client may not send upstream, in place.

        What to remove is worked out once per sequence of names the client sends
        (``RemovalPlans``): per request, one lookup and a removal per name dropped.
        """
        (self._plans_trusted if peer_trusted else self._plans).apply(out)


class RemovalPlans:
    """Which header names to remove, remembered per sequence of names as sent: a bounded map.

    A plan is the names (as sent, once each) that ``dropped`` says go, and whether
    Connection is one of them: then the names it lists go too (RFC 9110 7.6.1), read from
    its value each time.
    """

    def __init__(self, dropped: Callable[[str], bool]) -> None:
        self._dropped = dropped
        self._plans: Memo[tuple[str, ...], tuple[tuple[str, ...], bool]] = Memo(_PLANS_LIMIT)

    def apply(self, out: CIMultiDict[str]) -> None:
        """Remove from ``out``, in place, the headers ``dropped`` names and those Connection lists."""
        names = tuple(out)
        plan = self._plans.get(names)
        if plan is None:
            plan = _plan(names, self._dropped)
            if len(names) <= _PLAN_MAX_NAMES and sum(map(len, names)) <= _PLAN_MAX_CHARS:
                self._plans.remember(names, plan)
        doomed, connection = plan
        listed = connection_tokens(out.getall("Connection")) if connection else ()
        for name in doomed:
            out.popall(name, None)
        for name in listed:
            out.popall(name, None)


def _plan(names: tuple[str, ...], dropped: Callable[[str], bool]) -> tuple[tuple[str, ...], bool]:
    doomed = tuple(dict.fromkeys(name for name in names if dropped(name)))
    return doomed, any(name.lower() == "connection" for name in doomed)


def header_rules(*, owned: Iterable[str], separators: str) -> HeaderRules:
    return HeaderRules(owned=frozenset(fold_name(name) for name in owned), separators=separators)


def _separated(name: str) -> bool:
    return "_" in name or "." in name


def is_websocket_upgrade(headers: MultiMapping[str]) -> bool:
    """A WebSocket opening handshake (RFC 6455 4.1): Upgrade: websocket with Connection: upgrade."""
    upgrade = headers.get("Upgrade")
    # Connection is a list of tokens (RFC 9110 7.6.1), as llhttp reads it to decide an upgrade.
    return upgrade is not None and upgrade.lower() == "websocket" and \
        "upgrade" in connection_tokens(headers.getall("Connection", ()))


def connection_tokens(values: Sequence[str]) -> frozenset[str]:
    """Header names listed in ``Connection`` (RFC 9110 7.6.1), lowercased."""
    if len(values) == 1:
        return _tokens(values[0])
    return frozenset(token for value in values for token in _tokens(value))


@functools.lru_cache(maxsize=256)  # per answer: the upstream's "keep-alive" or "close", again and again
def _tokens(value: str) -> frozenset[str]:
    return frozenset(token.strip().lower() for token in value.split(",") if token.strip())


@dataclass(frozen=True, slots=True)
class ForwardedFor:
    """Who the client is, as far as the proxy can trust the chain in front of it."""

    client_ip: str
    peer_trusted: bool
    chain: str  # the X-Forwarded-For value to send upstream


def parse_networks(cidrs: Iterable[str]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(cidr, strict=False) for cidr in cidrs)


@functools.lru_cache(maxsize=4096)  # per request, for the peer and each hop: the same few addresses
def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _is_trusted(address: str, trusted: Sequence[IPNetwork]) -> bool:
    if not trusted:
        return False
    ip = _address(address)
    return ip is not None and any(ip in network for network in trusted)


@functools.lru_cache(maxsize=4096)  # per request: the same peers and chains again and again
def _forwarded(peer: str, client_chain: tuple[str, ...], trusted: tuple[IPNetwork, ...]) -> ForwardedFor:
    return _work_out_forwarded(peer, client_chain, trusted)


def forwarded_for(peer: str, client_chain: Sequence[str], trusted: Sequence[IPNetwork]) -> ForwardedFor:
    """See :func:`_work_out_forwarded`; remembered for the few peers and chains a proxy sees."""
    return _forwarded(peer, tuple(client_chain), tuple(trusted))


def _work_out_forwarded(peer: str, client_chain: Sequence[str], trusted: Sequence[IPNetwork]) -> ForwardedFor:
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
    rules: HeaderRules,
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
    rules.strip(out, peer_trusted=forwarded.peer_trusted)
    if upstream_host is not None:
        out["Host"] = upstream_host
    out["X-Forwarded-For"] = forwarded.chain
    out["X-Forwarded-Proto"] = client_proto or proto
    out["X-Forwarded-Host"] = client_host or host
    out["X-Request-Id"] = request_id
    return out


def downstream_response_headers(headers: Headers, *, also_removed: frozenset[str] = frozenset()
                                 ) -> CIMultiDict[str]:
    """The upstream's response headers as the client may see them (Set-Cookie etc. kept).

    Hop-by-hop headers and those Connection names go (RFC 9110 7.6.1), and the lowercased
    names in ``also_removed`` (a Content-Length the server will set itself).
    """
    out: CIMultiDict[str] = CIMultiDict(headers)
    _answer_plans(also_removed).apply(out)
    return out


@functools.lru_cache(maxsize=8)  # a handful: ``also_removed`` is each caller's constant
def _answer_plans(also_removed: frozenset[str]) -> RemovalPlans:
    removed = HOP_BY_HOP | also_removed
    return RemovalPlans(lambda name: name.lower() in removed)


# Set anew by the proxy for every request, whoever sent them.
_ALWAYS_REMOVED = HOP_BY_HOP | PROXY_HANDLED | {"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"}

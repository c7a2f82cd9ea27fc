"""What a request shows of its context for the risk engine: network prefix, browser, device.

Prefixes and browser families are worked out once per client address and User-Agent and
remembered per worker (:class:`~ztproxy.memo.Memo`). :func:`sign_in_context` is the context
a new session starts with (the sign-in flow seals it with the session).
"""

from __future__ import annotations

from aiohttp import web

from ztproxy.memo import Memo
from ztproxy.policy.model import Device
from ztproxy.risk import Browser, RiskState, Seen, browser_of, network_of
from ztproxy.state import RECORD

_NETWORKS: Memo[str, str | None] = Memo(4096)
_BROWSERS: Memo[str, Browser] = Memo(1024)


def seen_in(client_ip: str, user_agent: str | None, device: Device | None) -> Seen:
    """What a request shows of its context; prefixes and families are remembered per worker."""
    network = _NETWORKS.get(client_ip, "")
    if network == "":
        network = _NETWORKS.remember(client_ip, network_of(client_ip))
    agent = (user_agent or "")[:512]
    browser = _BROWSERS.get(agent)
    if browser is None:
        browser = _BROWSERS.remember(agent, browser_of(agent))
    return Seen(network, browser, device.id if device is not None else None)


def sign_in_context(request: web.Request) -> RiskState:
    """The context a session starts with: the callback request's network and browser."""
    record = request.get(RECORD)
    client_ip = record.context.client_ip if record is not None and record.intake is not None \
        else request.remote or ""
    return RiskState.at_sign_in(seen_in(client_ip, request.headers.get("User-Agent"), None))

"""Typed keys for what the app shares (AppKey) and what one request carries (RequestKey)."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web

from ztproxy.config.schema import Config
from ztproxy.context import CompiledRoute, RequestContext
from ztproxy.headers import HeaderRules, IPNetwork
from ztproxy.policy import Decision
from ztproxy.routing import RouteTable


@dataclass
class Readiness:
    """Whether this process should receive traffic (/readyz); cleared when draining."""

    ready: bool = False
    reasons: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class IntakeSettings:
    scheme: str
    trusted_proxies: tuple[IPNetwork, ...]
    max_header_bytes: int
    max_request_body: int | None
    endpoints_route: CompiledRoute  # what proxy endpoints belong to where no route matches
    header_rules: HeaderRules  # which client headers never reach an upstream


CONFIG = web.AppKey("config", Config)
ROUTES = web.AppKey("routes", RouteTable[CompiledRoute])
ROUTE_LIST = web.AppKey("route_list", tuple[CompiledRoute, ...])  # in configuration order
INTAKE = web.AppKey("intake", IntakeSettings)
READINESS = web.AppKey("readiness", Readiness)
POLICY_HASH = web.AppKey("policy_hash", str)  # of every route's compiled rules: the policy version in the audit log

REQUEST_ID = web.RequestKey("request_id", str)
CONTEXT = web.RequestKey("context", RequestContext)
DECISION = web.RequestKey("decision", Decision)  # set by authorize: the audit trail of this request

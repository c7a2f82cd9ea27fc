"""Per-request state: one frozen context built at intake, and the compiled routes it points to."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from yarl import URL

from ztproxy.config.schema import Config, RouteConfig
from ztproxy.headers import ForwardedFor
from ztproxy.origins import normalize_origin
from ztproxy.policy import RoutePolicy, compile_route_policy, names_services
from ztproxy.policy.criteria.grant import Grant, grant_terms
from ztproxy.routing import RequestTarget, RouteTable


@dataclass(frozen=True, slots=True)
class CompiledRoute:
    """A route as the data path needs it: parsed upstream, resolved policy."""

    name: str
    config: RouteConfig
    upstream: URL
    upstream_authority: str  # the Host header the upstream expects
    policy: RoutePolicy
    audience: str = ""  # of the identity assertion: configured, else the route's origin
    shadow: RoutePolicy | None = None  # evaluated and logged beside ``policy``, never enforced
    websocket_origins: frozenset[str] = frozenset()  # besides its own, normalized (``origins``)
    accepts_tokens: bool = False  # a rule names services: bearer tokens are read here
    grant: Grant | None = None  # the terms of its grants, when an allow rule asks for one (ztproxy.grants)

    @property
    def needs_identity(self) -> bool:
        """Whether any decision here can depend on who is asking (else no session lookup)."""
        return self.policy.constant is None or (self.shadow is not None and self.shadow.constant is None)


@dataclass(frozen=True, slots=True)
class RequestContext:
    request_id: str
    method: str  # the request's, or for forward-auth the original request's
    client_ip: str
    forwarded: ForwardedFor
    scheme: str
    host: str | None  # normalised request host (no port, lowercase)
    host_header: str  # as the client sent it, for X-Forwarded-Host
    target: RequestTarget  # canonical path + raw query
    route: CompiledRoute


ENDPOINTS_ROUTE_NAME = ".ztproxy"


def endpoints_route() -> CompiledRoute:
    """The route of proxy endpoints requested where no configured route matches: nothing passes it."""
    config = RouteConfig(name="ztproxy", upstream="http://127.0.0.1:9", websockets=False)
    return CompiledRoute(name=ENDPOINTS_ROUTE_NAME, config=config, upstream=URL(config.upstream),
                         upstream_authority="127.0.0.1:9", policy=compile_route_policy((), {}))


def compile_routes(config: Config) -> RouteTable[CompiledRoute]:
    return RouteTable(route_entries(config))


def route_origin(public_url: str, host: str | None) -> str:
    """``https://wiki.corp.example`` for a route host (scheme and port from the public URL)."""
    public = URL(public_url)
    if host is None:
        return str(public.origin())
    port = "" if public.explicit_port is None else f":{public.explicit_port}"
    return f"{public.scheme}://{host}{port}"


def route_entries(config: Config) -> Iterator[tuple[str | None, str, CompiledRoute]]:
    public_url = config.public_url
    for route in config.routes:
        upstream = URL(route.upstream)
        authority = upstream.raw_host or ""
        if ":" in authority:  # IPv6 literal
            authority = f"[{authority}]"
        if upstream.explicit_port is not None:
            authority = f"{authority}:{upstream.explicit_port}"
        policy = compile_route_policy(route.allow, config.policies, route.deny)
        compiled = CompiledRoute(
            name=route.name,
            config=route,
            upstream=upstream.with_path("/"),
            upstream_authority=authority,
            policy=policy,
            accepts_tokens=names_services(policy),
            grant=grant_terms(policy),
            audience=route.audience or route_origin(public_url, route.host),
            # A candidate allow list, judged with the same deny rules as the enforced one.
            shadow=None if route.shadow is None else compile_route_policy(route.shadow, config.policies, route.deny),
            websocket_origins=frozenset(filter(None, map(normalize_origin, route.websocket_origins))),
        )
        yield route.host, route.path, compiled

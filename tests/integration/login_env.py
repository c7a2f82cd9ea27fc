"""A signed-in world for integration tests: a real IdP, a real upstream and ztproxy in front of it.

``LoginWorld`` starts the demo OpenID Provider (npm oidc-provider) with a client registered
for the proxy, an upstream that echoes what it receives, and ztproxy configured with
routes that need sign-in, MFA and group membership. Tests drive it with ``UserAgent``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from tests.conftest import Proxy, ProxyFactory, Upstream, UpstreamFactory, free_port
from tests.support.idp import IdpFactory
from tests.support.user_agent import Response, UserAgent
from ztproxy.demo_idp import DemoIdp, IdpClient

CLIENT_ID = "ztproxy"
CLIENT_SECRET = "proxy-client-secret-for-tests"

ROUTES = """
routes:
  - name: app
    path: /app
    upstream: {upstream}
    allow: [{{email_domains: [corp.example]}}]
  - name: payroll
    path: /payroll
    upstream: {upstream}
    allow: [{{groups: [payroll], mfa: true}}]
  - name: mfa
    path: /mfa
    upstream: {upstream}
    allow: [{{email_domains: [corp.example], mfa: true}}]
  - name: fresh
    path: /fresh
    upstream: {upstream}
    allow: [{{email_domains: [corp.example], max_auth_age: 1m}}]
  - name: alices-only
    path: /alice
    upstream: {upstream}
    allow: [{{users: [alice]}}]
  - name: payroll-group
    path: /payroll-group
    upstream: {upstream}
    allow: [{{groups: [payroll]}}]
  - name: public
    path: /public
    upstream: {upstream}
    allow: [{{public: true}}]
"""


@dataclass
class LoginWorld:
    idp: DemoIdp
    proxy: Proxy
    upstream: Upstream

    @property
    def url(self) -> str:
        return self.proxy.url

    def last_upstream_request(self) -> dict[str, Any]:
        request = self.upstream.requests[-1]
        return {"path": request.raw_path, "headers": request.headers}

    async def login(self, agent: UserAgent, path: str, username: str, password: str,
                    totp_secret: str | None = None) -> Response:
        return await agent.login(self.url + path, username, password, totp_secret)


def echo_json(response: Response) -> dict[str, Any]:
    data = orjson.loads(response.text)
    assert isinstance(data, dict)
    return data


WorldFactory = Callable[..., Awaitable[LoginWorld]]
NO_SIGN_IN_BURST = "\n  sign_ins: {count: 100000, window: 60s, lock: 5m}"


async def start_world(start_idp: IdpFactory, start_proxy: ProxyFactory, start_upstream: UpstreamFactory, *,
                      sessions: str = "", provider: str = "", ttl: dict[str, int] | None = None,
                      routes: str = ROUTES, server: str = "", public_port: int | None = None,
                      public_host: str = "127.0.0.1", risk: str = "",
                      upstream_routes: list[web.RouteDef] | None = None) -> LoginWorld:
    """``public_host`` and ``public_port``: the name and port people use, when they are not the
    proxy's own (a name Chromium resolves to loopback by itself, such as app.localhost; a calling
    proxy in front, for forward-auth). The proxy itself listens on 127.0.0.1.

    ``risk``: the ``risk`` section's body (indented two spaces). Tests sign in often from one
    address: sign-ins are never a burst here unless a test says so. ``upstream_routes``: the
    upstream's own routes (default: every path answers with what it received).
    """
    upstream = await start_upstream(routes=upstream_routes)
    port = free_port()
    public = f"http://{public_host}:{public_port or port}"
    idp = await start_idp(clients=[IdpClient(
        client_id=CLIENT_ID, client_secret=CLIENT_SECRET,
        redirect_uris=(f"{public}/.ztproxy/callback",),
        post_logout_redirect_uris=(f"{public}/.ztproxy/signed-out",),
        backchannel_logout_uri=f"{public}/.ztproxy/backchannel-logout",
    )], ttl=ttl)
    proxy = await start_proxy(f"""
server:
  listen: 127.0.0.1:{port}
  public_url: {public}
  admin_listen: null
{server}
identity_providers:
  - name: demo
    issuer: {idp.issuer}
    client_id: {CLIENT_ID}
    client_secret: {CLIENT_SECRET}
    scopes: [openid, email, profile, groups]
    mfa: {{acr_values: [{idp.mfa_acr}]}}
{provider}
sessions:
  cookie_secrets: [0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef]
{sessions}
risk:
{risk if "sign_ins:" in risk else risk + NO_SIGN_IN_BURST}
{routes.format(upstream=upstream.url)}
""")
    return LoginWorld(idp=idp, proxy=proxy, upstream=upstream)

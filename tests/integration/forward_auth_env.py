"""A world with a calling proxy in front: nginx or Caddy asks ztproxy about each request (forward-auth).

``start_site(kind, ...)`` starts the login world of ``login_env`` (the real IdP, the echoing
app, ztproxy) with ``public_url`` on the calling proxy's port, then the calling proxy with the
configuration ``ztproxy forward-auth KIND`` prints, moved onto loopback. People and tests go
to ``Site.url``: the calling proxy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from tests.conftest import ProxyFactory, UpstreamFactory, free_port
from tests.integration.login_env import LoginWorld, start_world
from tests.support.caddy import CaddyFactory
from tests.support.idp import IdpFactory
from tests.support.nginx import NginxFactory
from ztproxy.calling_proxies import generate

KINDS = ("nginx", "caddy")


@dataclass
class Site:
    world: LoginWorld  # ztproxy behind the calling proxy, the IdP, the app
    url: str  # the calling proxy's
    log: Callable[[], str]  # the calling proxy's, for failure messages

    @property
    def front(self) -> LoginWorld:
        """The world as people see it: the same IdP and app, the calling proxy's address."""
        return dataclasses.replace(self.world, proxy=dataclasses.replace(self.world.proxy, url=self.url))


async def start_site(kind: str, start_idp: IdpFactory, start_proxy: ProxyFactory, start_upstream: UpstreamFactory,
                     start_nginx: NginxFactory, start_caddy: CaddyFactory) -> Site:
    port = free_port()
    world = await start_world(start_idp, start_proxy, start_upstream, public_port=port,
                              server="  trusted_proxies: [127.0.0.1/32]")
    generated = generate(kind, world.proxy.config, "test")
    if kind == "nginx":
        nginx = await start_nginx(generated.replace(f"listen {port};", f"listen 127.0.0.1:{port};"))
        return Site(world, nginx.url, lambda: nginx.output)
    site_address = f"http://127.0.0.1:{port} {{"
    assert site_address in generated
    caddy = await start_caddy(generated.replace(site_address, site_address + "\n    bind 127.0.0.1"), port)
    return Site(world, caddy.url, lambda: caddy.output)

"""Reloads leave nothing behind: a retired configuration's app, sessions and store are freed.

In process, so the objects can be watched: a ``LiveApp`` served by the proxy's runner, a
real IdP, a real sign-in, sessions on a real Redis or Redis Cluster, reloads while the
signed-in user keeps browsing. The cyclic collector is off for the test, so a retired
generation is freed by what the proxy does when it retires one, or not at all: an
automatic pass must not hide that it stays (in a long-running process those passes are
rare, and retired generations piled up, each with its store's client: issue 19's 30-minute
soak grew 1 MiB per reload on the cluster).
"""

from __future__ import annotations

import weakref

import pytest
from aiohttp import web

from tests.conftest import UpstreamFactory, free_port
from tests.support.idp import ALICE_PASSWORD, IdpFactory
from tests.support.user_agent import UserAgent
from ztproxy.app import build_app
from ztproxy.auth import AUTH
from ztproxy.config import load_text
from ztproxy.demo_idp import IdpClient
from ztproxy.listener import ProxyRunner
from ztproxy.reload import LiveApp

pytestmark = pytest.mark.integration

RELOADS = 3
SECRET = "proxy-client-secret-for-tests"


def watched(app: web.Application) -> dict[str, weakref.ref[object]]:
    """Weak references to a generation's app and what its sign-ins use (the store holds the clients)."""
    auth = app[AUTH]
    assert auth is not None
    return {"app": weakref.ref(app), "session manager": weakref.ref(auth.sessions),
            "session store": weakref.ref(auth.sessions.store)}


@pytest.mark.parametrize("store", ["redis", "cluster"])
async def test_a_retired_configuration_is_freed_with_its_store_and_sessions(
        store: str, request: pytest.FixtureRequest, collector_off: None, start_idp: IdpFactory,
        start_upstream: UpstreamFactory) -> None:
    store_url = request.getfixturevalue("redis_server" if store == "redis" else "shared_redis_cluster").url
    upstream = await start_upstream()
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    idp = await start_idp(clients=[IdpClient(client_id="ztproxy", client_secret=SECRET,
                                             redirect_uris=(f"{public}/.ztproxy/callback",))])

    def config_text(reloads: int) -> str:
        # Each reload adds a route, as bench/soak.py's do; the cookie secret stays (sessions survive).
        extra = "".join(f"  - {{name: extra-{n}, path: /extra-{n}, upstream: '{upstream.url}', "
                        f"allow: [{{public: true}}]}}\n" for n in range(1, reloads + 1))
        return f"""
server:
  listen: 127.0.0.1:{port}
  admin_listen: null
identity_providers:
  - {{name: demo, issuer: '{idp.issuer}', client_id: ztproxy, client_secret: {SECRET},
     scopes: [openid, email, profile, groups]}}
sessions:
  store: '{store_url}'
  cookie_secrets: [{"ab" * 32}]
  cache_ttl: 0s
routes:
  - {{name: app, path: /app, upstream: '{upstream.url}', allow: [{{email_domains: [corp.example]}}]}}
{extra}"""

    first = load_text(config_text(0))
    live = LiveApp(first, build_app)
    runner = ProxyRunner(live.front_app(), first)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
        retired: list[dict[str, weakref.ref[object]]] = []
        async with UserAgent() as agent:
            signed_in = await agent.login(f"{public}/app/page", "alice", ALICE_PASSWORD)
            assert signed_in.status == 200, signed_in.text[:500]
            for n in range(1, RELOADS + 1):
                retired.append(watched(live.app))
                assert await live.reload(load_text(config_text(n)))
                # The session, read from the store by the new generation: still signed in.
                page = await agent.get(f"{public}/app/after-reload-{n}")
                assert page.status == 200, page.location
                assert (await agent.get(f"{public}/extra-{n}/x")).status == 200
            await live.settled()
            current = watched(live.app)
        for index, generation in enumerate(retired):
            alive = [name for name, ref in generation.items() if ref() is not None]
            assert not alive, f"generation {index} retired, yet its {', '.join(alive)} still in memory"
        # The check can tell: the generation serving now is alive, seen through the same references.
        assert all(ref() is not None for ref in current.values())
    finally:
        await runner.cleanup()

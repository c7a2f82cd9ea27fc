"""Policy through the real proxy: method and path criteria, deny rules, deny pages."""

from __future__ import annotations

import aiohttp
import pytest

from tests.conftest import ProxyFactory, UpstreamFactory, free_port

pytestmark = pytest.mark.integration


async def test_methods_paths_and_deny_rules_are_enforced(start_upstream: UpstreamFactory,
                                                         start_proxy: ProxyFactory,
                                                         client: aiohttp.ClientSession) -> None:
    upstream = await start_upstream()
    proxy = await start_proxy(f"""
server: {{listen: "127.0.0.1:{free_port()}", admin_listen: null}}
policies:
  read-only: [{{public: true, methods: [GET, HEAD]}}]
routes:
  - name: docs
    upstream: {upstream.url}
    allow: [read-only]
    deny:
      - paths: [/internal]
      - source_cidrs: [203.0.113.0/24]
""")
    async with client.get(f"{proxy.url}/guide") as response:
        assert response.status == 200
    async with client.post(f"{proxy.url}/guide", data=b"x", headers={"Accept": "application/json"}) as response:
        assert response.status == 403
        data = await response.json()
    assert data["error"] == "access-denied"
    assert "not allowed" in data["message"]
    async with client.get(f"{proxy.url}/internal/keys", headers={"Accept": "text/html"}) as response:
        assert response.status == 403
        page = await response.text()
    assert "127.0.0.1" not in page.replace(proxy.url, "")  # no internal addresses on the page
    assert [request.path for request in upstream.requests] == ["/guide"]

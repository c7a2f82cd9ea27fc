"""The audit trail: one decision event per evaluated request, with the policy hash and the shadow verdict."""

from __future__ import annotations

import json
import time

import aiohttp

from tests.conftest import UpstreamFactory, free_port
from tests.integration.test_process import StartProcess
from ztproxy.config import load_text
from ztproxy.context import compile_routes
from ztproxy.policy import policy_hash


def decisions(log: str) -> list[dict[str, object]]:
    events = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    return [event for event in events if event.get("event") == "decision"]


async def test_decisions_are_logged_with_reasons_hash_and_shadow_verdict(start_upstream: UpstreamFactory,
                                                                         proxy_process: StartProcess) -> None:
    upstream = await start_upstream()
    yaml_text = f"""
server: {{listen: 127.0.0.1:{free_port()}, admin_listen: 127.0.0.1:{free_port()}}}
logging: {{flush_interval: 0s}}
routes:
  - name: office
    path: /office
    upstream: {upstream.url}
    allow: [{{source_cidrs: [127.0.0.0/8]}}]
    shadow: [{{source_cidrs: [10.0.0.0/8]}}]   # the change being rolled out would lock loopback out
  - name: closed
    path: /closed
    upstream: {upstream.url}
    allow: [{{source_cidrs: [192.0.2.0/24]}}]
  - name: open
    path: /open
    upstream: {upstream.url}
    allow: [{{public: true}}]
"""
    proxy = proxy_process(yaml_text)
    async with aiohttp.ClientSession() as client:
        for path, expected in (("/office/a", 200), ("/closed/b", 403), ("/open/c", 200)):
            async with client.get(proxy.url + path) as response:
                assert response.status == expected
    config = load_text(yaml_text)
    table = compile_routes(config)
    expected_hash = policy_hash({r.name: table.match(None, r.path).policy  # type: ignore[union-attr]
                                 for r in config.routes})
    deadline = time.monotonic() + 5
    while len(found := decisions(proxy.log_path.read_text())) < 2:
        assert time.monotonic() < deadline, proxy.log_path.read_text()[-2000:]
        time.sleep(0.05)
    office, closed = found
    assert office["route"] == "office" and office["decision"] == "allow" and office["path"] == "/office/a"
    assert office["shadow_decision"] == "deny" and office["shadow_disagrees"] is True
    assert office["shadow_reasons"] == ["source-not-allowed"] and office["policy"] == expected_hash
    assert office["subject"] is None and office["client"] == "127.0.0.1" and office["request_id"]
    assert office["caller"] == "anonymous"  # nobody established: no service, client or scopes either
    assert (office["service"], office["client_id"], office["scopes"]) == (None, None, None)
    assert closed["decision"] == "deny" and closed["reasons"] == ["source-not-allowed"]
    assert "shadow_decision" not in closed
    # Public routes are decided at load time: their requests show in the access log only.
    assert [event["route"] for event in found] == ["office", "closed"]
    # Disagreements are counted for the dashboards too.
    async with aiohttp.ClientSession() as client:
        async with client.get(proxy.admin_url + "/metrics") as response:
            scrape = await response.text()
    assert 'ztproxy_shadow_disagreements_total{enforced="allow",route="office",shadow="deny"} 1.0' in scrape

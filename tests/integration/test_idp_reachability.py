"""Nobody is sent to an IdP that cannot answer: the real demo IdP stopped and started under sign-ins.

``ztproxy run --workers 2`` with the admin listener; a small load of anonymous page loads
(each one a sign-in: a 302 to the IdP while it answers, the 503 "Sign-in unavailable" page
while it does not). The bound the proxy states (``CURRENT_FOR``) is checked with a margin
for a busy machine, as the fault report does.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import free_port
from tests.support.fault_scenarios import HANG_MARGIN, PLAIN_READ_TIMEOUT, ROUTES, sign_in
from tests.support.faults import Lab, Load, Probe, proxy_config
from ztproxy.oidc.reachability import CURRENT_FOR

pytestmark = pytest.mark.integration

WITHIN = 15.0  # for what must happen "soon": generous, a busy machine


async def admin_get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as client, client.get(url) as response:
        return response.status, await response.text()


async def eventually(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + WITHIN
    while not await condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


def readiness_says(admin_url: str, state: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        status, body = await admin_get(admin_url + "/readyz")
        answer: dict[str, Any] = json.loads(body)
        # Ready either way: the replica cannot sign anyone in, but its sessions keep working.
        return status == 200 and answer == {"status": "ready", "identity_providers": {"demo": state}}
    return check


def workers_report(admin_url: str, value: int) -> Callable[[], Awaitable[bool]]:
    pattern = re.compile(r'^ztproxy_idp_reachable\{[^}]*provider="demo"[^}]*\} (\S+)$', re.M)

    async def check() -> bool:
        _, text = await admin_get(admin_url + "/metrics")
        values = [float(v) for v in pattern.findall(text)]
        return len(values) == 2 and all(v == value for v in values)  # one per worker
    return check


async def test_sign_ins_get_the_503_page_while_the_idp_is_stopped_and_resume_when_it_is_back(
        tmp_path: Path) -> None:
    async with Lab(tmp_path) as lab:
        port, admin_port = free_port(), free_port()
        url = f"http://127.0.0.1:{port}"
        idp = await lab.idp(url)
        routes = ROUTES.format(upstream=await lab.upstream(), read_timeout=PLAIN_READ_TIMEOUT)
        store = lab.redis.start()
        proxy = await lab.proxy(proxy_config(port=port, admin_port=admin_port, routes=routes, idp=idp,
                                             sessions=f"  store: '{store.url}'"),
                                port=port, admin_port=admin_port, workers=2)
        await sign_in(url)
        await eventually(readiness_says(proxy.admin_url, "reachable"), "readiness to see the IdP")

        load = Load(url, [Probe("sign-in", "/app/", browser=True)], tasks=2, max_seconds=120).start()
        try:
            assert await load.first("sign-in", 302, since=time.monotonic(), within=WITHIN) is not None
            await idp.stop()
            stopped_at = time.monotonic()
            refused = await load.first("sign-in", 503, since=stopped_at, within=WITHIN)
            assert refused is not None and refused.detail.endswith("Sign-in unavailable"), refused
            await eventually(readiness_says(proxy.admin_url, "unreachable"), "readiness to report the IdP down")
            await eventually(workers_report(proxy.admin_url, 0), "every worker's gauge at 0")
            await asyncio.sleep(CURRENT_FOR + HANG_MARGIN)  # sign-ins go on well past the bound
            starting_at = time.monotonic()  # it may answer before start() returns
            await idp.start()
            resumed = await load.first("sign-in", 302, since=time.monotonic(), within=WITHIN)
        finally:
            samples = await load.finish()
        assert resumed is not None, "sign-ins did not resume"

        while_down = [s for s in samples if stopped_at <= s.started and s.ended <= starting_at]
        stranded = [s for s in while_down if s.status == 302 and s.started > stopped_at + CURRENT_FOR + HANG_MARGIN]
        assert not stranded, f"{len(stranded)} sign-ins sent to the stopped IdP past the bound"
        refusals = [s for s in while_down if s.status == 503]
        assert refusals and all(s.detail.endswith("Sign-in unavailable") for s in refusals)
        assert all(s.status in (302, 503) for s in samples), {(s.status, s.detail) for s in samples}

        # Ops learn why, once per outage and view (not once per check, every half second).
        unreachable = [event for event in map(json.loads, filter(lambda line: line.startswith("{"), proxy.log_lines()))
                       if event.get("event") == "idp_unreachable"]
        assert unreachable, "the outage was never logged"
        assert len(unreachable) <= 6, f"logged {len(unreachable)} times: once per check, not once per outage"
        assert all("Connect" in event["error"] for event in unreachable), unreachable

        await eventually(readiness_says(proxy.admin_url, "reachable"), "readiness to see the IdP back")
        await eventually(workers_report(proxy.admin_url, 1), "every worker's gauge back at 1")
        await sign_in(url)  # a whole sign-in at the restarted IdP

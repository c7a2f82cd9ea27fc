"""A small Microsoft Graph the tests control: the signed-in user's memberships, page by page.

It answers ``GET /v1.0/me/transitiveMemberOf`` with ``pages`` (each a list of directory
objects), linking each page to the next with ``@odata.nextLink`` as Graph does, and records
each request. A ``mode`` breaks it: ``error`` (500), ``refused`` (403), ``slow`` (answers after
``delay``), ``oversize`` (a body larger than any limit a test sets).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.conftest import free_port

MODES = ("ok", "error", "refused", "slow", "oversize")


def group(object_id: str, name: str, *, security: bool = True) -> dict[str, Any]:
    return {"@odata.type": "#microsoft.graph.group", "id": object_id, "displayName": name,
            "securityEnabled": security}


def role(object_id: str) -> dict[str, Any]:
    return {"@odata.type": "#microsoft.graph.directoryRole", "id": object_id, "displayName": "Global Reader"}


@dataclass
class ScriptedGraph:
    pages: list[list[dict[str, Any]]]
    mode: str = "ok"
    delay: float = 3.0
    url: str = ""
    requests: list[dict[str, Any]] = field(default_factory=list)  # query and Authorization of each

    async def members(self, request: web.Request) -> web.Response:
        self.requests.append({"query": dict(request.query), "authorization": request.headers.get("Authorization")})
        if self.mode == "error":
            return web.json_response({"error": {"code": "generalException"}}, status=500)
        if self.mode == "refused":
            return web.json_response({"error": {"code": "Authorization_RequestDenied"}}, status=403)
        if self.mode == "slow":
            await asyncio.sleep(self.delay)
        if self.mode == "oversize":
            return web.json_response({"value": [group(f"g{n}", "x" * 200) for n in range(2000)]})
        index = int(request.query.get("$skiptoken", "0"))
        page: dict[str, Any] = {"value": self.pages[index] if index < len(self.pages) else []}
        if index + 1 < len(self.pages):
            page["@odata.nextLink"] = f"{self.url}/v1.0/me/transitiveMemberOf?$skiptoken={index + 1}"
        return web.json_response(page)

    async def start(self) -> web.AppRunner:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        app = web.Application()
        app.router.add_get("/v1.0/me/transitiveMemberOf", self.members)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        return runner

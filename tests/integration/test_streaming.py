"""1 GiB each way through a ztproxy process, whose memory stays flat (bodies are streamed)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import ProxyProcess, UpstreamFactory, free_port

pytestmark = pytest.mark.integration

GIB = 1024**3
CHUNK = b"z" * (256 * 1024)
MEMORY_BUDGET_KIB = 200 * 1024  # peak RSS of the whole proxy process


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


async def test_one_gib_upload_and_download_with_flat_memory(start_upstream: UpstreamFactory,
                                                            proxy_process: Callable[..., ProxyProcess]) -> None:
    received: list[int] = []

    async def upload(request: web.Request) -> web.Response:
        total = 0
        async for chunk in request.content.iter_any():
            total += len(chunk)
        received.append(total)
        return web.json_response({"received": total})

    async def download(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": str(GIB)})
        await response.prepare(request)
        for _ in range(GIB // len(CHUNK)):
            await response.write(CHUNK)
        await response.write_eof()
        return response

    upstream = await start_upstream(routes=[web.post("/upload", upload), web.get("/download", download)])
    proxy = proxy_process(f"""
server:
  listen: 127.0.0.1:{free_port()}
  admin_listen: 127.0.0.1:{free_port()}
logging: {{access_log: false}}
routes:
  - name: app
    upstream: {upstream.url}
    allow: [{{public: true}}]
""")
    baseline = peak_rss_kib(proxy.process.pid)

    async def body() -> AsyncIterator[bytes]:
        for _ in range(GIB // len(CHUNK)):
            yield CHUNK

    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(timeout=timeout) as client:
        async with client.post(f"{proxy.url}/upload", data=body(),
                               headers={"Content-Length": str(GIB)}) as response:
            assert response.status == 200
            assert (await response.json())["received"] == GIB
        downloaded = 0
        async with client.get(f"{proxy.url}/download") as response:
            assert response.status == 200
            async for chunk in response.content.iter_any():
                downloaded += len(chunk)
    assert downloaded == GIB
    assert received == [GIB]
    peak = peak_rss_kib(proxy.process.pid)
    assert peak < MEMORY_BUDGET_KIB, f"proxy peak RSS {peak} KiB (baseline {baseline} KiB)"
    assert peak - baseline < 64 * 1024, f"proxy grew by {peak - baseline} KiB while streaming 2 GiB"

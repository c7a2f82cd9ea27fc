"""A bare aiohttp forwarder: the ceiling of a Python reverse proxy on this machine.

No routing, no policy, no logging. One catch-all route forwards method, path, headers
and body to one upstream through a pooled ``aiohttp.ClientSession`` and streams the
response back. ``--workers N`` runs N processes sharing the port with SO_REUSEPORT.

    python bench/bare_forwarder.py --listen 127.0.0.1:8081 --upstream http://127.0.0.1:8080
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import signal
from collections.abc import AsyncIterator

import aiohttp
import uvloop
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

# RFC 9110 7.6.1: connection-specific fields are not forwarded. Host is set by the client
# session from the upstream URL; Transfer-Encoding is redone by each side as needed.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
                        "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade", "host"})
SESSION_KEY = web.AppKey("session", aiohttp.ClientSession)


def _forwardable(headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in HOP_BY_HOP)


def build_app(upstream: str) -> web.Application:
    origin = upstream.rstrip("/")

    async def forward(request: web.Request) -> web.StreamResponse:
        url = URL(origin + request.raw_path, encoded=True)
        body = request.content if request.body_exists else None
        response: web.StreamResponse | None = None
        try:
            async with request.app[SESSION_KEY].request(
                request.method, url, headers=_forwardable(request.headers), data=body,
                allow_redirects=False,
            ) as upstream_response:
                response = web.StreamResponse(status=upstream_response.status,
                                              reason=upstream_response.reason,
                                              headers=_forwardable(upstream_response.headers))
                await response.prepare(request)
                async for chunk in upstream_response.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
                return response
        except aiohttp.ClientError:
            if response is not None and response.prepared:
                raise  # the status line is already sent: all we can do is drop the connection
            return web.Response(status=502, text="bad gateway\n")

    async def client_session(app: web.Application) -> AsyncIterator[None]:
        app[SESSION_KEY] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
        )
        yield
        await app[SESSION_KEY].close()

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", forward)
    app.cleanup_ctx.append(client_session)
    return app


async def serve(host: str, port: int, upstream: str) -> None:
    runner = web.AppRunner(build_app(upstream), access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, host, port, reuse_port=True, backlog=1024).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def worker_main(host: str, port: int, upstream: str) -> None:
    uvloop.run(serve(host, port, upstream))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, help="HOST:PORT")
    parser.add_argument("--upstream", required=True, help="http://HOST:PORT")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")

    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=worker_main, args=(host, int(port), args.upstream))
               for _ in range(max(1, args.workers))]
    for worker in workers:
        worker.start()
    # Wait for a stop signal or a dead worker, then stop every worker.
    signals = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    while all(worker.is_alive() for worker in workers):
        if signal.sigtimedwait(signals, 0.5) is not None:
            break
    for worker in workers:
        if worker.is_alive():
            worker.terminate()
    for worker in workers:
        worker.join(5)
        if worker.is_alive():
            worker.kill()
            worker.join()


if __name__ == "__main__":
    main()

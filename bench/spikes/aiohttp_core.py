"""Spike: the per-request work of ``work.py`` on aiohttp's server, as ztproxy serves today.

    python bench/spikes/aiohttp_core.py --listen 127.0.0.1:8081 --upstream http://127.0.0.1:8080 [--workers 2]
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from multidict import CIMultiDict
from work import Forwarder, parse_listen_args, run_workers, until_stopped


def handler_for(forwarder: Forwarder) -> Callable[[web.Request], Awaitable[web.Response]]:
    """The work on aiohttp's request and response objects."""

    async def handler(request: web.Request) -> web.Response:
        body = await request.read() if request.body_exists else None
        status, headers, content = await forwarder.handle(
            request.method, request.raw_path, request.headers.items(), request.remote or "", body)
        return web.Response(status=status, body=content, headers=CIMultiDict(headers))

    return handler


def main() -> None:
    host, port, upstream, workers = parse_listen_args()

    async def serve() -> None:
        forwarder = Forwarder(upstream)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler_for(forwarder))
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, host, port, reuse_port=True, backlog=1024).start()
        try:
            await until_stopped()
        finally:
            await runner.cleanup()
            await forwarder.pool.close()

    run_workers(serve, workers)


if __name__ == "__main__":
    main()

"""``ztproxy demo``: a sample app behind the proxy on loopback, on embedded defaults.

The sample app shows every request header it received, so a newcomer sees what the
proxy adds (X-Forwarded-*, X-Request-Id) and what it strips (any X-Ztproxy-* a client
tries to send, hop-by-hop headers).
"""

from __future__ import annotations

import html
import socket

from aiohttp import web

from ztproxy.config import load_text
from ztproxy.server import run_loop, serve
from ztproxy.telemetry import configure_logging

DEMO_CONFIG = """
server:
  listen: 127.0.0.1:{port}
  admin_listen: 127.0.0.1:{admin_port}
logging:
  format: console
routes:
  - name: demo-app
    host: 127.0.0.1
    upstream: http://127.0.0.1:{app_port}
    allow:
      - public: true          # explicitly unauthenticated; every other route is default-deny
  - name: locked
    host: 127.0.0.1
    path: /locked
    upstream: http://127.0.0.1:{app_port}
    allow: []                 # nobody: shows the deny page
"""


async def sample_app_handler(request: web.Request) -> web.Response:
    rows = "".join(f"<tr><th>{html.escape(name)}</th><td>{html.escape(value)}</td></tr>"
                   for name, value in request.headers.items())
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>ztproxy demo app</title>"
        "<style>body{font-family:system-ui,sans-serif;margin:2rem}th{text-align:left;padding-right:1rem}"
        "td,th{border-bottom:1px solid #ddd;padding:.3rem}</style></head><body>"
        "<h1>Hello from the sample app</h1>"
        f"<p>You asked for <code>{html.escape(request.method)} {html.escape(request.path_qs)}</code>. "
        "These are the headers the app received through ztproxy:</p>"
        f"<table>{rows}</table>"
        "<p>Try <a href='/locked'>/locked</a> for the deny page.</p></body></html>"
    )
    return web.Response(text=page, content_type="text/html")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _demo(port: int) -> int:
    app = web.Application()
    app.router.add_route("*", "/{path:.*}", sample_app_handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    app_port = free_port()
    await web.TCPSite(runner, "127.0.0.1", app_port).start()
    config = load_text(DEMO_CONFIG.format(port=port, admin_port=free_port(), app_port=app_port), "<demo>")
    print(f"\n  ztproxy demo: open http://127.0.0.1:{port}/ in your browser (Ctrl-C to stop)\n", flush=True)
    try:
        return await serve(config)
    finally:
        await runner.cleanup()


def run_demo(port: int = 8080, log_format: str = "console") -> int:
    configure_logging("info", "console" if log_format == "console" else "json")
    try:
        return run_loop(_demo(port))
    except OSError as error:
        print(f"ztproxy demo: cannot listen on 127.0.0.1:{port}: {error.strerror}; try --port", flush=True)
        return 1


__all__ = ["run_demo"]

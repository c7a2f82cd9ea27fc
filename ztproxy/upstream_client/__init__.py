"""The upstream HTTP/1.1 client: pooled keep-alive connections, responses parsed by llhttp.

Forwarding is the proxy's hottest path, and aiohttp's general-purpose client (cookie
jar, redirects, URL building, tracing hooks, per-request timers) cost about twice what
the whole rest of a forwarded request costs. This client does only what forwarding needs:
it writes the request head the proxy already built, streams the body, and hands back the
status, headers and body as ``httptools`` (the llhttp parser, strict mode) reads them.
Parsing stays in the library; this module owns connections, framing choices and timeouts.

- One pool per process, idle connections kept per origin (scheme, host, port), most
  recently used first, closed after ``idle_timeout``; at most ``limit`` open in all.
- A fresh parser per exchange, so a HEAD answer (headers only, whatever Content-Length
  says) never confuses the next response on the connection.
- A reused connection that the upstream closed before answering a bodyless request gets
  one retry on a new connection (RFC 9110 9.3.1: safe to repeat, nothing was received).
- ``read_timeout`` bounds any wait for the upstream (headers or the next body bytes)
  with no byte received or sent; ``connect_timeout`` bounds only opening a connection.
- Response heads over ``max_header_bytes`` and anything llhttp refuses (bad framing,
  Content-Length with Transfer-Encoding, control characters) are protocol errors: 502.
- Request heads are checked for CR/LF/NUL in names and values before they are written.
"""

from ztproxy.upstream_client.connection import (
    Origin,
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeoutError,
)
from ztproxy.upstream_client.pool import IDEMPOTENT, UpstreamPool, UpstreamResponse, encode_head

__all__ = [
    "IDEMPOTENT",
    "Origin",
    "UpstreamConnectError",
    "UpstreamError",
    "UpstreamPool",
    "UpstreamProtocolError",
    "UpstreamResponse",
    "UpstreamTimeoutError",
    "encode_head",
]

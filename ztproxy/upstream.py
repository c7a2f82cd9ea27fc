"""The upstreams as the handlers share them: clients, each route's target, request headers, failures.

HTTP requests go through ``upstream_client.UpstreamPool`` (keep-alive HTTP/1.1, llhttp;
``forward.py``), gRPC routes' through ``http2.client.Http2Pool`` (``forward_grpc.py``),
WebSockets through an aiohttp ``ClientSession`` (``websocket.py``). Neither
follows redirects, keeps cookies or decompresses, so the upstream's bytes reach the client
unchanged: a handshake the upstream answers with anything but 101 comes back as
``UpgradeRefused``, its answer still open, before aiohttp could follow a redirect.

Each route's upstream and timeouts are worked out once, in ``RouteUpstream``; the headers a
request takes upstream are built once, in ``forward_headers``; and every way an upstream
can fail maps to its page in one place, ``upstream_failure``: connection failures 502,
timeouts 504 (``upstream_failures`` wraps it as a context manager where no request is hot).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from ztproxy.auth import AUTH
from ztproxy.context import CompiledRoute, RequestContext
from ztproxy.cookies import strip_own_cookies_cached
from ztproxy.errors import RequestError, UpstreamTimeout, UpstreamUnavailable
from ztproxy.headers import upstream_request_headers
from ztproxy.http2.client import Http2Pool
from ztproxy.state import CONFIG, INTAKE, RequestRecord
from ztproxy.upstream_client import Origin, UpstreamError, UpstreamPool, UpstreamTimeoutError

# aiohttp's client adds these unless told not to; the proxy sends only what the client sent.
_SKIP_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
_POOL_LIMIT = 1000
_POOL_LIMIT_PER_HOST = 0  # unlimited per host within the pool limit


@dataclass(frozen=True, slots=True)
class RouteUpstream:
    """Where a route's requests go and how long the upstream may take: the one place of both."""

    origin: Origin
    connect_timeout: float  # opening a new connection (a pooled one costs no timer)
    read_timeout: float  # each quiet gap while waiting for the upstream's next bytes


@dataclass(frozen=True, slots=True)
class Upstream:
    """The process-wide connection pool and WebSocket client, and each route's target."""

    pool: UpstreamPool
    session: aiohttp.ClientSession  # WebSockets only
    http2: Http2Pool  # gRPC routes (``forward_grpc.py``)
    targets: dict[str, RouteUpstream]  # by route name


class UpgradeRefused(Exception):
    """The upstream answered a WebSocket handshake with a plain HTTP response (403, 302...)."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        super().__init__(f"the upstream answered the upgrade with {response.status}")
        self.response = response  # open: its body is the caller's to relay, then close


async def _refusals_as_errors(request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
                              ) -> aiohttp.ClientResponse:
    """Client middleware of the WebSocket client: an answer other than 101 ends the handshake here.

    ``ws_connect`` would follow a redirect itself, and turn any other status into an error
    without the body; the app's answer belongs to the client instead.
    """
    response = await handler(request)
    if response.status != 101:
        raise UpgradeRefused(response)
    return response


# Every way an upstream can fail (WSServerHandshakeError is a ClientError).
UPSTREAM_ERRORS = (UpstreamError, TimeoutError, aiohttp.ClientError)


def upstream_failure(exc: BaseException, what: str = "") -> RequestError:
    """The page for one of ``UPSTREAM_ERRORS``: 504 for a timeout, else 502.

    ``what`` says what failed, for the page (e.g. the WebSocket handshake). The forwarding
    handler catches ``UPSTREAM_ERRORS`` and raises this in a plain ``try``: a generator
    context manager per request costs more than the rest of its error handling.
    """
    if isinstance(exc, UpstreamTimeoutError | TimeoutError):
        return UpstreamTimeout()
    return UpstreamUnavailable(what)


@contextlib.contextmanager
def upstream_failures(what: str = "") -> Iterator[None]:
    """``upstream_failure`` around a block: every way an upstream can fail becomes its page."""
    try:
        yield
    except UPSTREAM_ERRORS as exc:
        raise upstream_failure(exc, what) from exc


UPSTREAM = web.AppKey("upstream", Upstream)


async def client_session_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: open the pooled client on startup, close it on shutdown."""
    connector = aiohttp.TCPConnector(limit=_POOL_LIMIT, limit_per_host=_POOL_LIMIT_PER_HOST,
                                     ttl_dns_cache=60, enable_cleanup_closed=False)
    session = aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        skip_auto_headers=_SKIP_AUTO_HEADERS,
        timeout=aiohttp.ClientTimeout(total=None),
        trust_env=False,
        middlewares=(_refusals_as_errors,),
    )
    targets = {
        route.name: RouteUpstream(origin=origin_of(URL(route.upstream)), connect_timeout=route.connect_timeout,
                                  read_timeout=route.read_timeout)
        for route in app[CONFIG].routes
    }
    pool = UpstreamPool(limit=_POOL_LIMIT)
    http2 = Http2Pool()
    app[UPSTREAM] = Upstream(pool=pool, session=session, http2=http2, targets=targets)
    try:
        yield
    finally:
        try:
            await session.close()
        finally:
            await pool.close()
            await http2.close()


def origin_of(url: URL) -> Origin:
    assert url.scheme in ("http", "https") and url.host is not None and url.port is not None  # config checked
    return Origin(scheme=url.scheme, host=url.host, port=url.port)


def upstream_url(route: CompiledRoute, ctx: RequestContext, *, websocket: bool = False) -> URL:
    """The exact canonical path that was matched and authorised, with the client's query."""
    base = route.upstream
    scheme = base.scheme
    if websocket:
        scheme = "wss" if scheme == "https" else "ws"
    authority = route.upstream_authority
    query = f"?{ctx.target.query}" if ctx.target.query else ""
    return URL(f"{scheme}://{authority}{ctx.target.path}{query}", encoded=True)


def forward_headers(request: web.Request, record: RequestRecord) -> CIMultiDict[str]:
    """The headers the upstream receives: the client's, cleaned (``headers``), and the caller's identity."""
    ctx = record.context
    app = request.app
    headers = upstream_request_headers(
        request.headers,
        rules=app[INTAKE].header_rules,
        forwarded=ctx.forwarded,
        proto=ctx.scheme,
        host=ctx.host_header,
        request_id=ctx.request_id,
        upstream_host=None if ctx.route.config.preserve_host else ctx.route.upstream_authority,
    )
    for name, value in record.upstream_identity:  # the assertion step's, after every client spelling is gone
        headers[name] = value
    auth = app[AUTH]
    if auth is not None and "Cookie" in headers:
        # The session cookie opens the session: the upstream app must never see it.
        kept = [rest for value in headers.getall("Cookie")
                if (rest := strip_own_cookies_cached(value, auth.cookies.names)) is not None]
        headers.popall("Cookie")
        for value in kept:
            headers.add("Cookie", value)
    return headers

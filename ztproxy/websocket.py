"""WebSocket proxying: the upstream handshake first, then frames relayed both ways.

The upstream connection is opened before the client's upgrade is accepted, so an
unreachable upstream gives the client a 502 page instead of a socket that closes at once,
and an app that refuses the upgrade (403, 401, a redirect to its login) is heard as it
answered: its status, headers and body reach the client.
Text, binary, ping/pong and close (with its code and reason) pass through unchanged;
the subprotocol the upstream chose is the one offered to the client. A socket is verified
for as long as it stays open (``ztproxy.socket_watch``): when its session or credential
ends, or the route's policy would refuse it now, it is closed with 1008 and a reason.
"""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import WSMsgType, web

from ztproxy import tracing
from ztproxy.errors import UpstreamTimeout, UpstreamUnavailable
from ztproxy.headers import downstream_response_headers
from ztproxy.socket_watch import SocketWatch
from ztproxy.state import RECORD
from ztproxy.upstream import UPSTREAM, UpgradeRefused, forward_headers, upstream_failures, upstream_url

# aiohttp generates its own handshake headers for the upstream leg.
_HANDSHAKE_HEADERS = ("Sec-WebSocket-Key", "Sec-WebSocket-Version", "Sec-WebSocket-Extensions",
                      "Sec-WebSocket-Protocol", "Sec-WebSocket-Accept")
# RFC 6455 7.4.1: 1005 and 1006 describe a close; they must never be sent in one.
_UNSENDABLE = frozenset({1005, 1006})
# RFC 6455 7.4.1: 1008, a policy violation: the session that opened the socket is no longer valid.
SESSION_ENDED_CLOSE = 1008


def _offered_protocols(request: web.Request) -> tuple[str, ...]:
    return tuple(token.strip() for value in request.headers.getall("Sec-WebSocket-Protocol", ())
                 for token in value.split(",") if token.strip())


async def _relay(source: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
                 sink: web.WebSocketResponse | aiohttp.ClientWebSocketResponse) -> None:
    """Copy frames from source to sink until source closes; pass its close code on."""
    while True:
        message = await source.receive()
        kind = message.type
        if kind is WSMsgType.TEXT:
            await sink.send_str(message.data)
        elif kind is WSMsgType.BINARY:
            await sink.send_bytes(message.data)
        elif kind is WSMsgType.PING:
            await sink.ping(message.data)
        elif kind is WSMsgType.PONG:
            await sink.pong(message.data)
        elif kind is WSMsgType.CLOSE:
            code = message.data if isinstance(message.data, int) and message.data not in _UNSENDABLE else 1000
            reason = message.extra if isinstance(message.extra, str) else ""
            if not sink.closed:
                await sink.close(code=code, message=reason.encode("utf-8"))
            return
        else:
            # CLOSING: our own close() of this socket is under way; CLOSED/ERROR: it is gone.
            if kind is not WSMsgType.CLOSING and not sink.closed:
                await sink.close(code=1011 if kind is WSMsgType.ERROR else 1000)
            return


async def _relay_refusal(request: web.Request, refusal: aiohttp.ClientResponse,
                         read_timeout: float) -> web.StreamResponse:
    """The app's own answer to the upgrade, streamed to the client as any response is."""
    headers = downstream_response_headers(refusal.headers)
    headers["X-Request-Id"] = request[RECORD].context.request_id
    response = web.StreamResponse(status=refusal.status, reason=refusal.reason, headers=headers)
    await response.prepare(request)
    try:
        with upstream_failures():
            while True:
                async with asyncio.timeout(read_timeout or None):
                    chunk = await refusal.content.readany()
                if not chunk:
                    break
                await response.write(chunk)
    except (UpstreamTimeout, UpstreamUnavailable):
        # Headers are out: the only honest signal left is to cut the connection.
        if request.transport is not None:
            request.transport.abort()
        return response
    await response.write_eof()
    return response


async def proxy_websocket(request: web.Request) -> web.StreamResponse:
    record = request[RECORD]
    ctx = record.context
    upstream = request.app[UPSTREAM]
    headers = forward_headers(request, record)
    for name in _HANDSHAKE_HEADERS:
        headers.popall(name, None)
    target = upstream.targets[ctx.route.name]
    url = upstream_url(ctx.route, ctx, websocket=True)
    # The client span covers the handshake only: a socket may stay open for hours.
    span = None if tracing.TRACER is None else tracing.start_client_span(request.method, url, headers)
    answered = 0
    try:
        # The handshake is one request and its answer: bounded as an HTTP request is (the
        # WebSocket client applies no connect or read timeout of its own to it).
        with upstream_failures("The application did not complete the WebSocket handshake."):
            async with asyncio.timeout(target.connect_timeout + target.read_timeout):
                upstream_ws = await upstream.session.ws_connect(
                    url, headers=headers,
                    protocols=_offered_protocols(request), autoping=False, autoclose=False, max_msg_size=0,
                    timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=target.read_timeout or 10.0),
                )
        answered = 101
    except UpgradeRefused as refused:
        answered = refused.response.status
        try:
            return await _relay_refusal(request, refused.response, target.read_timeout)
        finally:
            refused.response.close()
    finally:
        if span is not None:
            tracing.end_client_span(span, answered)

    async with upstream_ws:
        client_ws = web.WebSocketResponse(
            protocols=(upstream_ws.protocol,) if upstream_ws.protocol else (),
            autoping=False, autoclose=False, max_msg_size=0)
        client_ws.headers["X-Request-Id"] = ctx.request_id
        await client_ws.prepare(request)
        watch = SocketWatch(request, record)
        watch.start()
        to_upstream = asyncio.create_task(_relay(client_ws, upstream_ws))
        to_client = asyncio.create_task(_relay(upstream_ws, client_ws))
        closed = asyncio.create_task(watch.closed.wait())
        try:
            done, pending = await asyncio.wait((to_upstream, to_client, closed), return_when=asyncio.FIRST_COMPLETED)
            if closed in done:
                # Access ended: not one more frame either way, then tell the client why.
                to_upstream.cancel()
                to_client.cancel()
                await asyncio.gather(to_upstream, to_client, return_exceptions=True)
                await client_ws.close(code=SESSION_ENDED_CLOSE, message=watch.over)
            else:
                # The first side to close has sent its close frame on; let the other side answer it.
                await asyncio.wait(pending - {closed}, timeout=target.read_timeout or 10.0)
        finally:
            await watch.stop()
            for task in (to_upstream, to_client, closed):
                task.cancel()
            await asyncio.gather(to_upstream, to_client, closed, return_exceptions=True)
            if not client_ws.closed:
                await client_ws.close()
        return client_ws

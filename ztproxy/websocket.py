"""WebSocket proxying: the upstream handshake first, then frames relayed both ways.

The upstream connection is opened before the client's upgrade is accepted, so an
unreachable upstream gives the client a 502 page instead of a socket that closes at once,
and an app that refuses the upgrade (403, 401, a redirect to its login) is heard as it
answered: its status, headers and body reach the client.
Text, binary, ping/pong and close (with its code and reason) pass through unchanged;
the subprotocol the upstream chose is the one offered to the client. A socket opened
with a session is closed with 1008 as soon as that session is revoked, here or on any
other worker or replica (``SessionManager.watch``), and so is a socket a grant let in when
that grant ends (``GrantsView.until_ended``), or as soon as a security signal's effect (the
session losing MFA, the user's claims changed, the device reported not compliant:
``ztproxy.signals.effects``) means the route's policy would refuse it now. A socket a
service opened closes when its client, workload or token is revoked (on any replica:
``ztproxy.service_revocations``) and when its credential ends (the token's ``exp``, the
certificate's notAfter): the service connects again with a fresh one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import aiohttp
from aiohttp import WSMsgType, web

from ztproxy import tracing
from ztproxy.auth import AUTH
from ztproxy.errors import UpstreamTimeout, UpstreamUnavailable
from ztproxy.facts import still_allowed
from ztproxy.grants.model import person_key
from ztproxy.grants.service import GRANTS
from ztproxy.headers import downstream_response_headers
from ztproxy.policy.criteria.grant import Grant
from ztproxy.service_revocations import REVOKED_SERVICES
from ztproxy.state import RECORD, Person, RequestRecord, ServiceCaller
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


def _watch_session(request: web.Request, record: RequestRecord, ended: asyncio.Event) -> Callable[[], None]:
    """Set ``ended`` when the session that opened this socket ends; returns how to stop watching."""
    caller = record.caller
    auth = request.app.get(AUTH)
    if isinstance(caller, ServiceCaller):
        return _watch_service(request, caller, ended)
    if not isinstance(caller, Person) or auth is None:
        return lambda: None  # nobody: nothing to watch
    return auth.sessions.watch(caller.ticket.store_key, ended.set)


def _watch_service(request: web.Request, caller: ServiceCaller, ended: asyncio.Event) -> Callable[[], None]:
    """Set ``ended`` when the service's credential ends or is revoked; returns how to stop watching."""
    loop = asyncio.get_running_loop()
    timer = None if caller.ends is None else loop.call_later(max(0.0, caller.ends - time.time()), ended.set)
    revoked = request.app[REVOKED_SERVICES]

    def judge() -> None:
        if revoked is not None and revoked.refusal(caller.service, time.time()) is not None:
            ended.set()

    unlisten = None if revoked is None else revoked.listen(judge)

    def stop() -> None:
        if timer is not None:
            timer.cancel()
        if unlisten is not None:
            unlisten()
    return stop


def _watch_grant(request: web.Request, record: RequestRecord, ended: asyncio.Event) -> asyncio.Task[None] | None:
    """Set ``ended`` when the grant that let this socket in ends (its time, or revoked on any replica)."""
    caller, decision, route = record.caller, record.decision, record.context.route
    grants = request.app[GRANTS]
    if grants is None or route.grant is None or not isinstance(caller, Person) or decision is None \
            or Grant.name not in decision.reasons:
        return None  # not let in by a grant (another rule held): nothing of a grant to watch

    async def watch() -> None:
        await grants.view.until_ended(person_key(caller.session.provider, caller.subject), route.name)
        ended.set()

    return asyncio.create_task(watch())


def _watch_effects(request: web.Request, record: RequestRecord, withdrawn: asyncio.Event) -> Callable[[], None]:
    """Set ``withdrawn`` when a security signal's effect arriving here means the policy no longer
    lets this socket's request through; returns how to stop watching."""
    caller = record.caller
    auth = request.app.get(AUTH)
    if not isinstance(caller, Person) or auth is None:
        return lambda: None
    effects = auth.effects
    grants, route = request.app[GRANTS], record.context.route

    def judge() -> None:
        session, _ = effects.adjust(caller.session)
        device = None if record.device is None else effects.device(record.device)
        granted = grants is not None and route.grant is not None and grants.view.holds(
            person_key(caller.session.provider, caller.subject), route.name, time.time())
        if not still_allowed(record, session.identity, device, granted=granted):
            withdrawn.set()

    return effects.listen(judge)


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
        session_ended, access_withdrawn = asyncio.Event(), asyncio.Event()
        stop_watching = _watch_session(request, record, session_ended)
        grant_watch = _watch_grant(request, record, session_ended)
        stop_judging = _watch_effects(request, record, access_withdrawn)
        to_upstream = asyncio.create_task(_relay(client_ws, upstream_ws))
        to_client = asyncio.create_task(_relay(upstream_ws, client_ws))
        ended = asyncio.create_task(session_ended.wait())
        withdrawn = asyncio.create_task(access_withdrawn.wait())
        try:
            done, pending = await asyncio.wait((to_upstream, to_client, ended, withdrawn),
                                               return_when=asyncio.FIRST_COMPLETED)
            if ended in done or withdrawn in done:
                # Revoked: not one more frame either way, then tell the client why.
                to_upstream.cancel()
                to_client.cancel()
                await asyncio.gather(to_upstream, to_client, return_exceptions=True)
                if ended in done and isinstance(caller := record.caller, ServiceCaller):
                    expired = caller.ends is not None and time.time() >= caller.ends
                    over = b"credential expired" if expired else b"access revoked"
                elif ended in done:
                    over = b"access ended" if grant_watch is not None and grant_watch.done() else b"session ended"
                else:
                    over = b"access withdrawn"
                await client_ws.close(code=SESSION_ENDED_CLOSE, message=over)
            else:
                # The first side to close has sent its close frame on; let the other side answer it.
                await asyncio.wait(pending - {ended, withdrawn}, timeout=target.read_timeout or 10.0)
        finally:
            stop_watching()
            stop_judging()
            if grant_watch is not None:
                grant_watch.cancel()
            for task in (to_upstream, to_client, ended, withdrawn):
                task.cancel()
            await asyncio.gather(to_upstream, to_client, ended, withdrawn, return_exceptions=True)
            if not client_ws.closed:
                await client_ws.close()
        return client_ws

"""The proxy's listener: its socket, TLS context, and aiohttp's connection handling made safe.

``start_listener`` serves an app on a bound socket with ``ProxyRunner``: an ``AppRunner``
whose connections have a deadline for their first request's headers, get our error pages
for what the HTTP parser refuses, and never wait for a drain that has already closed them.

Every use of aiohttp's private API in ztproxy is here (read against 3.14, the locked version):

- ``web_protocol.RequestHandler``, subclassed: its ``connection_made``, ``start``,
  ``connection_lost``, ``handle_error`` and ``force_close``, and the state ``_close``,
  ``_messages``, ``_request_count``, ``_loop``, ``max_line_size`` and ``max_field_size``,
  for the header deadline, the parser's errors as our pages, and the drain.
- ``web.Server``, subclassed: ``__call__`` (the protocol factory), ``pre_shutdown`` (the
  runner has closed the listener: the drain begins) and its ``_kwargs`` and ``_loop``.
- ``web.AppRunner._make_server``, overridden to serve our ``web.Server``, with the app's
  ``_set_loop``, ``_handle`` and ``_make_request`` and the runner's ``_kwargs``, as
  aiohttp's own does; ``start_app`` is its sequence for starting an app.
- ``http_exceptions.LineTooLong``'s arguments: the second is the limit the parser hit.
- ``web_response.SERVER_SOFTWARE``, the module global each response's default ``Server``
  header is read from, replaced by ``SERVER_NAME``.

A connection that negotiates HTTP/2 (ALPN), or on a plain listener with
``server.http2.cleartext`` opens with the HTTP/2 preface, leaves aiohttp's handler for
``ztproxy.http2`` (``transport.set_protocol``) before aiohttp has seen a byte of it;
``ztproxy.http2.stream`` names the private API that side relies on.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
import ssl
from typing import Any, cast

from aiohttp import web, web_response
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import LineTooLong
from aiohttp.web_protocol import RequestHandler

from ztproxy.config.schema import Config, TlsConfig
from ztproxy.config.values import split_listen
from ztproxy.errors import BadRequest, HeadersTooLarge, RequestError, UriTooLong
from ztproxy.http2.server import PREFACE, ServerConnection, ServerSettings
from ztproxy.pages import error_response
from ztproxy.telemetry import AccessLogger, get_logger
from ztproxy.workloads.bundles import ClientTrust, trust_bundles

log = get_logger("ztproxy.listener")

_REQUEST_TIMEOUT = (b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\n"
                    b"Content-Type: text/plain\r\nContent-Length: 25\r\n\r\nRequest headers too slow\n")
_BACKLOG = 1024

# aiohttp adds "Server: Python/3.x aiohttp/3.y" to every response that has none
# (StreamResponse._prepare_headers: setdefault(SERVER, SERVER_SOFTWARE), read from this
# module global at each response). Versions tell an attacker which advisories apply: the
# proxy's own responses, and an app's that name no server, say only this. An app's own
# Server header passes as it is.
SERVER_NAME = "ztproxy"
web_response.SERVER_SOFTWARE = SERVER_NAME  # type: ignore[attr-defined]  # not in its __all__


class _GuardedRequestHandler(RequestHandler):
    """aiohttp's connection handler with a deadline for the first request's headers.

    aiohttp closes idle keep-alive connections itself (``keepalive_timeout``, which also
    bounds a dribbled second request), but waits forever for a first request that
    never completes: that is the slowloris hole closed here. One timer per connection,
    nothing per request: when it fires, a connection that has sent a request is left
    alone. Parser errors are rendered as our pages, 431 or 414 for oversized input.

    At SIGTERM no connection waits for the drain: one the drain has closed before its
    first request is closed at once (``start``), as is one whose TLS handshake ends
    after the drain began (``connection_made``).
    """

    def __init__(self, manager: _ProxyServer, *, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._server = manager
        self._header_timeout = header_timeout
        self._header_deadline: asyncio.TimerHandle | None = None
        self._undecided: asyncio.BaseTransport | None = None  # h2c or HTTP/1.1: the first bytes tell
        self._first_bytes = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._server.http2 is not None and _negotiated_h2(transport):
            self._server.serve_http2(transport, self.access_logger)
            return
        if self._server.cleartext_h2 and transport.get_extra_info("ssl_object") is None:
            # RFC 9113 3.3: prior knowledge. Nothing is parsed until the preface is seen or ruled out.
            self._undecided = transport
            self._header_deadline = self._loop.call_later(self._header_timeout, self._undecided_too_slow)
            return
        self._accept(transport)

    def _accept(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self._server.draining:
            # Not on the list Server.shutdown() waits for, so nothing would ever close it
            # before the process exits: a TLS connection (uvloop calls connection_made when
            # the handshake ends, sslproto.pyx) that was still shaking hands at the drain.
            self.force_close()
            return
        self._header_deadline = self._loop.call_later(self._header_timeout, self._headers_too_slow)

    def data_received(self, data: bytes) -> None:
        if self._undecided is None:
            super().data_received(data)
            return
        self._first_bytes += data
        if len(self._first_bytes) < len(PREFACE) and PREFACE.startswith(self._first_bytes):
            return
        transport, self._undecided = self._undecided, None
        self._cancel_deadline()
        if self._first_bytes.startswith(PREFACE):
            self._server.serve_http2(transport, self.access_logger, self._first_bytes)
            return
        self._accept(transport)
        if not self._force_close:
            super().data_received(self._first_bytes)
        self._first_bytes = b""

    def _undecided_too_slow(self) -> None:
        self._header_deadline = None
        transport = cast(asyncio.Transport, self._undecided)
        if transport is not None:
            peer = transport.get_extra_info("peername")
            log.info("request_header_timeout", client=peer[0] if isinstance(peer, tuple) else peer)
            transport.write(_REQUEST_TIMEOUT)
            transport.close()

    def _cancel_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    async def start(self) -> None:
        # The drain's close() (Server.pre_shutdown) stops an idle connection by cancelling
        # its wait for a request; this task may not be waiting yet. uvloop calls
        # connection_made a loop pass after the accept (basetransport.pyx
        # _schedule_call_connection_made) and on Python 3.11 aiohttp starts this task a pass
        # later still (no eager tasks), so a connection accepted as the listener closed
        # reached the drain with nothing to cancel, then waited for a request that
        # data_received drops once closed: unanswered until shutdown_grace (or the 408 of
        # header_timeout). aiohttp's loop tests only _force_close before it waits.
        if self._close and not self._messages:
            self.force_close()
            return
        await super().start()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_deadline()
        if self._undecided is not None:  # never accepted as HTTP/1.1: aiohttp has nothing to let go of
            self._undecided = None
            return
        super().connection_lost(exc)

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        if self._request_count == 0 and self.transport is not None:
            peer = self.peername
            log.info("request_header_timeout", client=peer[0] if isinstance(peer, tuple) else peer)
            self.transport.write(_REQUEST_TIMEOUT)
            self.force_close()

    def handle_error(self, request: Any, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if status >= 500:
            return super().handle_error(request, status, exc, message)
        error: RequestError
        if isinstance(exc, LineTooLong):
            # The parser names the limit it hit: the request line's, or a header field's.
            limit = exc.args[1] if len(exc.args) > 1 else None
            line_limit_hit = limit == self.max_line_size and self.max_line_size != self.max_field_size
            error = UriTooLong() if line_limit_hit else HeadersTooLarge()
        elif "Too many headers" in str(exc):
            error = HeadersTooLarge()
        else:
            error = BadRequest("The request is not valid HTTP.")
        peer = self.peername
        log.info("request_rejected", client=peer[0] if isinstance(peer, tuple) else peer, status=error.status,
                 reason=str(exc)[:200] if exc else message)
        return error_response(error, request_id="-", close=True)


def _negotiated_h2(transport: asyncio.BaseTransport) -> bool:
    ssl_object = transport.get_extra_info("ssl_object")
    return ssl_object is not None and ssl_object.selected_alpn_protocol() == "h2"  # RFC 9113 3.2


class _ProxyServer(web.Server):
    def __init__(self, *args: Any, header_timeout: float, http2: ServerSettings | None, cleartext_h2: bool,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timeout = header_timeout
        self.http2 = http2
        self.cleartext_h2 = cleartext_h2
        self.draining = False

    def serve_http2(self, transport: asyncio.BaseTransport, access_logger: AbstractAccessLogger | None,
                    preface: bytes = b"") -> None:
        """Serve the connection as HTTP/2 from now on; ``preface``: its bytes read so far."""
        assert self.http2 is not None
        connection = ServerConnection(self, self.http2, access_logger)
        transport.set_protocol(connection)
        connection.connection_made(transport, preface)
        if self.draining:
            connection.close()  # as for HTTP/1.1 (connection_made below): GOAWAY before any stream

    def pre_shutdown(self) -> None:
        self.draining = True  # the runner has closed the listener: the drain begins
        super().pre_shutdown()

    def __call__(self) -> RequestHandler:
        return _GuardedRequestHandler(self, loop=self._loop, header_timeout=self._header_timeout,
                                      **self._kwargs)


async def start_app(app: web.Application) -> None:
    """Start ``app`` (its startup signal and cleanup contexts) as aiohttp's ``AppRunner`` does."""
    app.on_startup.freeze()
    await app.startup()
    app.freeze()


class ProxyRunner(web.AppRunner):
    """An AppRunner whose connections get the header deadline and our error pages."""

    def __init__(self, app: web.Application, config: Config) -> None:
        limits = config.server.limits
        super().__init__(
            app,
            handle_signals=False,
            access_log_class=AccessLogger,
            access_log=logging.getLogger("ztproxy.access") if config.logging.access_log else None,
            shutdown_timeout=config.server.shutdown_grace,
            handler_cancellation=True,  # a client that goes away cancels its upstream request
            keepalive_timeout=limits.keepalive_timeout,
            max_line_size=limits.max_line_bytes,
            max_field_size=limits.max_header_bytes,
            max_headers=limits.max_header_count,
        )
        self._header_timeout = limits.header_timeout
        http2 = config.server.http2
        self._http2 = ServerSettings(
            max_concurrent_streams=http2.max_concurrent_streams, max_header_bytes=limits.max_header_bytes,
            max_header_count=limits.max_header_count, header_timeout=limits.header_timeout,
            keepalive_timeout=limits.keepalive_timeout,
        ) if http2.enabled or http2.cleartext else None
        self._cleartext_h2 = http2.cleartext and config.server.tls is None

    async def _make_server(self) -> web.Server:
        app = self.app
        loop = asyncio.get_running_loop()
        app._set_loop(loop)
        await start_app(app)
        return _ProxyServer(app._handle, request_factory=app._make_request, loop=loop,
                            header_timeout=self._header_timeout, http2=self._http2,
                            cleartext_h2=self._cleartext_h2, **self._kwargs)


async def start_listener(app: web.Application, config: Config, sock: socket.socket) -> ProxyRunner:
    """Serve ``app`` on ``sock`` (bound by ``bind_socket``), over TLS when configured.

    ``cleanup`` on the runner closes the listener, then waits up to ``shutdown_grace``
    for the requests in flight.
    """
    runner = ProxyRunner(app, config)
    await runner.setup()
    await web.SockSite(runner, sock, ssl_context=ssl_context(config), backlog=_BACKLOG).start()
    return runner


TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


def ssl_context(config: Config) -> ssl.SSLContext | None:
    """The listener's TLS context; with ``client_ca_file`` or trust bundles it asks for a client certificate.

    A client certificate is asked for, never required: without one the request is served
    with no device and no workload. One issued by the device CA or a trust bundle passes
    whatever its dates (OpenSSL's X509_V_FLAG_NO_CHECK_TIME, which the ssl module has no name
    for): an expired certificate would otherwise fail the handshake, and its client would
    get no page at all, public routes included, while it presents it.
    ``ztproxy.posture.client_cert`` and ``ztproxy.workloads.svid`` check the dates against
    the request's clock instead and give no device or workload. One from another CA fails
    the connection (alert unknown_ca): the stdlib offers no verify callback to accept it as
    "no certificate" (tests/integration/posture/test_tls.py shows each case). With
    ``workload_identity``, each handshake gets the context of the trust bundles as their
    files say now (``ztproxy.workloads.bundles.ClientTrust``).
    """
    tls = config.server.tls
    if tls is None:
        return None
    alpn = ["h2", "http/1.1"] if config.server.http2.enabled else ["http/1.1"]
    if config.workload_identity is None:
        return _server_context(tls, alpn, "")
    trust = ClientTrust(trust_bundles(config.workload_identity), functools.partial(_server_context, tls, alpn))
    return trust.listener_context()


def _server_context(tls: TlsConfig, alpn: list[str], authorities: str) -> ssl.SSLContext:
    """A server context trusting ``client_ca_file`` and ``authorities`` (PEM) for client certificates."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_3 if tls.min_version == "1.3" else ssl.TLSVersion.TLSv1_2
    # TLS 1.2: only ephemeral key exchange with an AEAD cipher (forward secrecy; RFC 9113
    # 9.2.2 forbids the others under HTTP/2, and RFC 9325 4.2 recommends exactly these).
    # TLS 1.3's suites are all AEAD and are not set by this list.
    context.set_ciphers(TLS12_CIPHERS)
    context.load_cert_chain(tls.cert_file, tls.key_file)
    context.set_alpn_protocols(alpn)
    if tls.client_ca_file is not None or authorities:
        context.verify_mode = ssl.CERT_OPTIONAL  # RFC 8446 4.3.2: request, don't require
        if tls.client_ca_file is not None:
            context.load_verify_locations(tls.client_ca_file)
        if authorities:
            context.load_verify_locations(cadata=authorities)
        context.verify_flags |= 0x200000  # X509_V_FLAG_NO_CHECK_TIME (OpenSSL x509_vfy.h)
    return context


def bind_socket(listen: str, *, reuse_port: bool) -> socket.socket:
    host, port = split_listen(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(_BACKLOG)
    sock.setblocking(False)
    return sock

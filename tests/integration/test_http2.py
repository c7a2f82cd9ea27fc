"""HTTP/2 from clients: TLS with ALPN h2 to the listener, every request through the pipeline.

A real h2 client (``tests.support.h2client``) against the proxy's listener with certificates
made by ``tests.support.posture``, forwarding to real aiohttp upstreams over HTTP/1.1.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web
from h2.errors import ErrorCodes
from hpack import Decoder
from hyperframe.frame import DataFrame, Frame, HeadersFrame, RstStreamFrame, SettingsFrame

from tests.conftest import (
    ProxyFactory,
    ProxyProcess,
    Upstream,
    UpstreamFactory,
    free_port,
    proxy_yaml,
    raw_exchange,
)
from tests.support.h2client import H2Client, H2Response, RawH2, data_frame, echo_app, goaway
from tests.support.posture import DevicePki
from ztproxy.app import build_app
from ztproxy.config import load_text
from ztproxy.http2.server import ServerConnection, ServerSettings
from ztproxy.listener import ProxyRunner, ssl_context

pytestmark = pytest.mark.integration


async def test_a_get_over_h2_reaches_the_upstream_cleaned(start_upstream: UpstreamFactory,
                                                          start_proxy: ProxyFactory, device_pki: DevicePki) -> None:
    upstream = await start_upstream()
    proxy = await start_proxy(proxy_yaml(upstream.url, server=f"  tls: {device_pki.tls_yaml(client_ca=False)}"))
    client = await H2Client.connect(proxy.port, device_pki.client_context())
    try:
        assert client.alpn == "h2"
        response = await client.request("GET", "/hello?x=1", [("x-ztproxy-user", "forged"),
                                                              ("x_ztproxy_user", "forged"), ("accept", "*/*")])
    finally:
        await client.close()
    assert response.status == 200, response
    assert response.header("x-request-id")
    seen = upstream.requests[-1]
    assert seen.raw_path == "/hello?x=1"
    assert "forged" not in str(list(seen.headers.items()))
    assert seen.headers["Host"] == "localhost"


def _tls_proxy(upstream_url: str, pki: DevicePki, *, server: str = "", allow: str = "[{public: true}]") -> str:
    return proxy_yaml(upstream_url, server=f"  tls: {pki.tls_yaml(client_ca=False)}\n{server}", allow=allow)


async def test_bodies_stream_both_ways_within_the_windows(start_upstream: UpstreamFactory, start_proxy: ProxyFactory,
                                                          device_pki: DevicePki) -> None:
    """5 MiB up and 8 MiB down: far past every window, so flow control must work on both legs."""
    async def echo_size(request: web.Request) -> web.StreamResponse:
        received = 0
        async for chunk in request.content.iter_any():
            received += len(chunk)
        response = web.StreamResponse(headers={"X-Received": str(received)})
        await response.prepare(request)
        for _ in range(128):
            await response.write(b"z" * 65536)
        await response.write_eof()
        return response

    upstream = await start_upstream(echo_size)
    proxy = await start_proxy(_tls_proxy(upstream.url, device_pki))
    client = await H2Client.connect(proxy.port, device_pki.client_context())
    try:
        response = await client.request("POST", "/upload", [("content-type", "application/octet-stream")],
                                        body=b"a" * (5 * 1024 * 1024))
    finally:
        await client.close()
    assert response.status == 200, response
    assert response.header("x-received") == str(5 * 1024 * 1024)
    assert len(response.body) == 128 * 65536
    assert response.header("transfer-encoding") is None and response.header("connection") is None


async def test_expect_100_continue_is_answered_after_authorization(start_upstream: UpstreamFactory,
                                                                   start_proxy: ProxyFactory,
                                                                   device_pki: DevicePki) -> None:
    upstream = await start_upstream()
    proxy = await start_proxy(_tls_proxy(upstream.url, device_pki))
    client = await H2Client.connect(proxy.port, device_pki.client_context())
    try:
        response = await client.request("PUT", "/file", [("expect", "100-continue")], body=b"payload")
    finally:
        await client.close()
    assert response.informational == [100] and response.status == 200
    assert "Expect" not in upstream.requests[-1].headers


async def test_an_upstream_too_slow_is_a_504_over_h2(start_upstream: UpstreamFactory, start_proxy: ProxyFactory,
                                                     device_pki: DevicePki) -> None:
    never = asyncio.Event()

    async def hang(request: web.Request) -> web.StreamResponse:
        await never.wait()
        return web.Response()

    upstream = await start_upstream(hang)
    config = _tls_proxy(upstream.url, device_pki).replace("    allow:", "    read_timeout: 1s\n    allow:")
    proxy = await start_proxy(config)
    client = await H2Client.connect(proxy.port, device_pki.client_context())
    try:
        response = await client.request("GET", "/slow", [("accept", "application/json")])
    finally:
        await client.close()
    assert response.status == 504 and b"upstream-timeout" in response.body


async def test_limits_hold_over_h2(start_upstream: UpstreamFactory, start_proxy: ProxyFactory,
                                   device_pki: DevicePki) -> None:
    upstream = await start_upstream()
    limits = "  limits: {max_header_count: 20, max_header_bytes: 4KiB, max_request_body: 1KiB}"
    proxy = await start_proxy(_tls_proxy(upstream.url, device_pki, server=limits))
    client = await H2Client.connect(proxy.port, device_pki.client_context())
    try:
        many = await client.request("GET", "/", [(f"x-h{i}", "v") for i in range(30)])
        declared = await client.request("POST", "/", [("content-length", "4096")], body=b"x" * 4096)
        streamed = await client.request("POST", "/", body=b"x" * 4096)
        fine = await client.request("GET", "/ok")
    finally:
        await client.close()
    # Past SETTINGS_MAX_HEADER_LIST_SIZE, HPACK decoding stops: h2 makes it a connection error.
    client = await H2Client.connect(proxy.port, device_pki.client_context())
    try:
        big = await client.request("GET", "/big", [("x-big", "v" * 3000), ("x-big2", "v" * 2000)])
        await client.wait_closed()
    finally:
        await client.close()
    assert big.status == 0 and client.goaway is not None
    assert many.status == 431
    assert declared.status == 413
    assert streamed.status == 413 or streamed.reset is not None  # the body passed the limit on the way
    assert fine.status == 200
    # The declared body never left; the streamed one was cut off on its way, as over HTTP/1.1.
    assert [request.method for request in upstream.requests] == ["POST", "GET"]


async def test_streams_over_the_limit_never_reach_upstream(start_upstream: UpstreamFactory,
                                                           start_proxy: ProxyFactory, device_pki: DevicePki) -> None:
    """SETTINGS_MAX_CONCURRENT_STREAMS holds even for a client that never acknowledged it.

    ``h2`` makes the excess a connection error (RFC 9113 5.1.2 allows it): the streams in
    flight end with it, and the excess ones never reach the upstream.
    """
    release = asyncio.Event()

    async def held(request: web.Request) -> web.StreamResponse:
        await release.wait()
        return web.Response(text="done")

    upstream = await start_upstream(held)
    proxy = await start_proxy(_tls_proxy(upstream.url, device_pki, server="  http2: {max_concurrent_streams: 2}"))
    raw = await RawH2.connect(proxy.port, device_pki.client_context())
    try:
        for stream_id in (1, 3):
            raw.headers(stream_id, raw.header_block(f"/{stream_id}"))
        while len(upstream.requests) < 2:  # both in flight at the upstream
            await asyncio.sleep(0.01)
        for stream_id in (5, 7):
            raw.headers(stream_id, raw.header_block(f"/{stream_id}"))
        frames = await raw.read_until_closed()
    finally:
        release.set()
        raw.close()
    refusal = goaway(frames)
    assert refusal is not None and refusal.error_code == ErrorCodes.PROTOCOL_ERROR
    assert sorted(request.raw_path for request in upstream.requests) == ["/1", "/3"]


async def _attacked(start_upstream: UpstreamFactory, start_proxy: ProxyFactory, pki: DevicePki,
                    attack: Callable[[RawH2], Awaitable[None]], *, server: str = "") -> tuple[list[Frame], Upstream]:
    """What the proxy sent back until it closed the connection, and what reached the upstream."""
    upstream = await start_upstream()
    proxy = await start_proxy(_tls_proxy(upstream.url, pki, server=server))
    raw = await RawH2.connect(proxy.port, pki.client_context(), ack=True)
    try:
        await attack(raw)
        frames = await raw.read_until_closed()
    finally:
        raw.close()
    return frames, upstream


async def test_rapid_reset_closes_the_connection(start_upstream: UpstreamFactory, start_proxy: ProxyFactory,
                                                 device_pki: DevicePki) -> None:
    """CVE-2023-44487: streams opened and reset at once, by the thousand, end with GOAWAY ENHANCE_YOUR_CALM."""
    async def attack(raw: RawH2) -> None:
        for stream_id in range(1, 4001, 2):
            raw.headers(stream_id, raw.header_block("/reset-me"))
            raw.rst(stream_id)

    frames, upstream = await _attacked(start_upstream, start_proxy, device_pki, attack)
    refusal = goaway(frames)
    assert refusal is not None and refusal.error_code == ErrorCodes.ENHANCE_YOUR_CALM
    assert len(upstream.requests) < 2000  # far fewer than were opened: the connection was cut short


async def test_continuation_flood_is_refused(start_upstream: UpstreamFactory, start_proxy: ProxyFactory,
                                             device_pki: DevicePki) -> None:
    """VU#421644: a header block that never ends is a connection error, not a growing buffer."""
    async def attack(raw: RawH2) -> None:
        raw.headers(1, raw.header_block("/flood"), end_headers=False)
        for _ in range(10_000):
            raw.continuation(1, b"\x00" * 16)  # never END_HEADERS

    frames, upstream = await _attacked(start_upstream, start_proxy, device_pki, attack)
    refusal = goaway(frames)
    assert refusal is not None and refusal.error_code != ErrorCodes.NO_ERROR
    assert upstream.requests == []


async def test_hpack_bomb_is_refused(start_upstream: UpstreamFactory, start_proxy: ProxyFactory,
                                     device_pki: DevicePki) -> None:
    """A small block that decodes to a huge header list (one big indexed field, repeated) stops at the limit."""
    async def attack(raw: RawH2) -> None:
        await raw.read_until(lambda f: isinstance(f, SettingsFrame) and "ACK" in f.flags)
        raw.encoder.encode([("x-bomb", "b" * 3000)])  # now in the dynamic table: each reference costs one byte
        block = raw.header_block("/bomb", [("x-bomb", "b" * 3000)] * 200)
        assert len(block) < 16_384  # one frame carries it all
        raw.headers(1, block)

    frames, upstream = await _attacked(start_upstream, start_proxy, device_pki, attack,
                                       server="  limits: {max_header_bytes: 8KiB}")
    refusal = goaway(frames)
    assert refusal is not None and refusal.error_code != ErrorCodes.NO_ERROR
    assert upstream.requests == []


async def test_a_silent_connection_is_closed(start_upstream: UpstreamFactory, start_proxy: ProxyFactory,
                                             device_pki: DevicePki) -> None:
    """Slowloris over h2: the preface, then nothing; header_timeout ends it."""
    async def attack(raw: RawH2) -> None:
        pass  # the preface and SETTINGS, sent by connect, are all

    frames, _ = await _attacked(start_upstream, start_proxy, device_pki, attack,
                                server="  limits: {header_timeout: 1s}")
    refusal = goaway(frames)
    assert refusal is not None and refusal.error_code == ErrorCodes.NO_ERROR


async def test_h2c_with_prior_knowledge_beside_http1(start_upstream: UpstreamFactory, start_proxy: ProxyFactory,
                                                     client: aiohttp.ClientSession) -> None:
    upstream = await start_upstream()
    proxy = await start_proxy(proxy_yaml(upstream.url, server="  http2: {cleartext: true}"))
    h2c = await H2Client.connect(proxy.port)
    try:
        response = await h2c.request("GET", "/over-h2c", [("x-ztproxy-email", "forged@example.com")])
    finally:
        await h2c.close()
    assert response.status == 200
    async with client.get(f"{proxy.url}/over-http1") as http1:
        assert http1.status == 200 and http1.version == aiohttp.HttpVersion11
    data, _ = await raw_exchange(proxy.port, b"GET /pipelined HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 200")
    assert [request.raw_path for request in upstream.requests] == ["/over-h2c", "/over-http1", "/pipelined"]
    assert "X-Ztproxy-Email" not in upstream.requests[0].headers


async def test_h2c_is_refused_unless_configured(start_upstream: UpstreamFactory, start_proxy: ProxyFactory) -> None:
    upstream = await start_upstream()
    proxy = await start_proxy(proxy_yaml(upstream.url))
    raw = await RawH2.connect(proxy.port)
    try:
        raw.headers(1, raw.header_block("/h2c"))
        data = await asyncio.wait_for(raw.reader.read(), 30)
    finally:
        raw.close()
    assert b" 400 " in data.split(b"\r\n")[0]
    assert upstream.requests == []


async def test_an_undecided_cleartext_connection_times_out(start_upstream: UpstreamFactory,
                                                           start_proxy: ProxyFactory) -> None:
    upstream = await start_upstream()
    proxy = await start_proxy(proxy_yaml(upstream.url, server="  http2: {cleartext: true}\n"
                                                              "  limits: {header_timeout: 1s}"))
    data, closed = await raw_exchange(proxy.port, b"PRI * HTTP/2", read_timeout=30)
    assert closed and data.startswith(b"HTTP/1.1 408")


async def test_drain_finishes_streams_in_flight_and_takes_no_new_ones(start_upstream: UpstreamFactory,
                                                                      device_pki: DevicePki) -> None:
    release = asyncio.Event()
    arrived = asyncio.Event()

    async def held(request: web.Request) -> web.StreamResponse:
        arrived.set()
        await release.wait()
        return web.Response(text="finished")

    upstream = await start_upstream(held)
    config = load_text(_tls_proxy(upstream.url, device_pki, server="  shutdown_grace: 60s"))
    host, _, port = config.server.listen.rpartition(":")
    runner = ProxyRunner(build_app(config), config)
    await runner.setup()
    await web.TCPSite(runner, host, int(port), ssl_context=ssl_context(config)).start()
    raw = await RawH2.connect(int(port), device_pki.client_context(), ack=True)
    try:
        raw.headers(1, raw.header_block("/in-flight"))
        await asyncio.wait_for(arrived.wait(), 30)
        drain = asyncio.create_task(runner.cleanup())
        while not getattr(runner.server, "draining", False):  # the listener has closed: the drain began
            await asyncio.sleep(0.01)
        raw.headers(3, raw.header_block("/too-late"))
        refused = await raw.read_until(lambda f: isinstance(f, RstStreamFrame) and f.stream_id == 3)
        release.set()
        frames = await raw.read_until_closed()
        await asyncio.wait_for(drain, 60)
    finally:
        release.set()
        raw.close()
    assert refused.error_code == ErrorCodes.REFUSED_STREAM  # RFC 9113 8.7: the client may retry it elsewhere
    body = b"".join(frame.data for frame in frames if isinstance(frame, DataFrame) and frame.stream_id == 1)
    assert body == b"finished"
    refusal = goaway(frames)
    assert refusal is not None and refusal.error_code == ErrorCodes.NO_ERROR
    assert [request.raw_path for request in upstream.requests] == ["/in-flight"]


SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n"


@pytest.mark.parametrize("headers", [
    [("x-note", "a\r\nx-ztproxy-user: mallory")],  # RFC 9113 8.2.1: CR, LF, NUL make it malformed
    [("transfer-encoding", "chunked")],  # 8.2.2: connection-specific, never in HTTP/2
    [("connection", "keep-alive")],
    [("X-Upper", "case")],  # 8.2.1: names are lowercase
], ids=["crlf-in-value", "transfer-encoding", "connection", "uppercase-name"])
async def test_malformed_requests_never_reach_the_upstream(start_upstream: UpstreamFactory,
                                                           start_proxy: ProxyFactory, device_pki: DevicePki,
                                                           headers: list[tuple[str, str]]) -> None:
    async def attack(raw: RawH2) -> None:
        raw.headers(1, raw.header_block("/malformed", headers))

    frames, upstream = await _attacked(start_upstream, start_proxy, device_pki, attack)
    refusal = goaway(frames)
    assert refusal is not None and refusal.error_code == ErrorCodes.PROTOCOL_ERROR
    assert upstream.requests == []


async def test_a_body_longer_than_its_content_length_smuggles_nothing(start_upstream: UpstreamFactory,
                                                                      start_proxy: ProxyFactory,
                                                                      device_pki: DevicePki) -> None:
    """The HTTP/2 to HTTP/1.1 downgrade: a body past its Content-Length is malformed (RFC 9113 8.1.1)."""
    upstream = await start_upstream()
    proxy = await start_proxy(_tls_proxy(upstream.url, device_pki))
    raw = await RawH2.connect(proxy.port, device_pki.client_context(), ack=True)
    try:
        raw.headers(1, raw.header_block("/upload", [("content-length", "5")], method="POST"), end_stream=False)
        raw.write(data_frame(1, b"hello" + SMUGGLED))
        frames = await raw.read_until_closed()
    finally:
        raw.close()
    refusal = goaway(frames)
    assert refusal is not None and refusal.error_code == ErrorCodes.PROTOCOL_ERROR
    client = await H2Client.connect(proxy.port, device_pki.client_context())
    try:
        after = await client.request("GET", "/after")
    finally:
        await client.close()
    assert after.status == 200
    assert "/smuggled" not in [request.raw_path for request in upstream.requests]
    assert upstream.requests[-1].raw_path == "/after"


async def test_a_refused_upload_tells_the_client_to_stop_sending(start_upstream: UpstreamFactory,
                                                                 start_proxy: ProxyFactory,
                                                                 device_pki: DevicePki) -> None:
    """RFC 9113 8.1: a complete answer before the whole body, then RST_STREAM NO_ERROR."""
    upstream = await start_upstream()
    proxy = await start_proxy(_tls_proxy(upstream.url, device_pki, server="  limits: {max_request_body: 1KiB}"))
    raw = await RawH2.connect(proxy.port, device_pki.client_context(), ack=True)
    try:
        raw.headers(1, raw.header_block("/upload", [("content-length", "1048576")], method="POST"), end_stream=False)
        raw.write(data_frame(1, b"x" * 1024, end_stream=False))
        stop = await raw.read_until(lambda f: isinstance(f, RstStreamFrame) and f.stream_id == 1)
    finally:
        raw.close()
    assert stop.error_code == ErrorCodes.NO_ERROR
    answer = next(frame for frame in raw.received if isinstance(frame, HeadersFrame) and frame.stream_id == 1)
    assert (b":status", b"413") in Decoder().decode(answer.data, raw=True)
    assert upstream.requests == []


async def test_an_upstream_answering_before_the_body_ends(start_upstream: UpstreamFactory, start_proxy: ProxyFactory,
                                                          device_pki: DevicePki) -> None:
    """The upstream refuses an upload without reading it, while the client still sends: the connection lives on."""
    async def refuse(request: web.Request) -> web.StreamResponse:
        return web.Response(status=403, text="not you")

    upstream = await start_upstream(refuse)
    proxy = await start_proxy(_tls_proxy(upstream.url, device_pki))
    client = await H2Client.connect(proxy.port, device_pki.client_context())
    try:
        refused = await client.request("POST", "/upload", body=b"u" * (3 * 1024 * 1024))
        after = await client.request("GET", "/after")
    finally:
        await client.close()
    assert refused.status == 403 and refused.reset in (None, ErrorCodes.NO_ERROR)
    assert after.status == 403 and after.body == b"not you"  # answered on the same connection
    assert client.goaway is None


def serve_tls_process(proxy_process: Callable[..., ProxyProcess], pki: DevicePki, route: str) -> int:
    """``ztproxy run --workers 2`` on TLS with one route (a YAML flow mapping); its port."""
    proxy = proxy_process(f"""
server:
  listen: 127.0.0.1:{free_port()}
  admin_listen: 127.0.0.1:{free_port()}
  tls: {pki.tls_yaml(client_ca=False)}
routes:
  - {route}
""", "--workers", "2")
    return int(proxy.url.rsplit(":", 1)[1])


def test_ztproxy_run_serves_h2_on_uvloop(proxy_process: Callable[..., ProxyProcess], device_pki: DevicePki) -> None:
    """The real server (uvloop, its TLS transport handed to the HTTP/2 protocol), in worker processes."""
    upstream_port = free_port()
    port = serve_tls_process(proxy_process, device_pki,
                             f'{{name: app, upstream: "http://127.0.0.1:{upstream_port}", allow: [{{public: true}}]}}')

    async def exchange() -> H2Response:
        upstream = web.AppRunner(echo_app([]), access_log=None)
        await upstream.setup()
        await web.TCPSite(upstream, "127.0.0.1", upstream_port).start()
        client = await H2Client.connect(port, device_pki.client_context())
        try:
            assert client.alpn == "h2"
            return await client.request("POST", "/echo", body=b"b" * 300_000)
        finally:
            await client.close()
            await upstream.cleanup()

    response = asyncio.run(exchange())
    assert response.status == 200 and response.body == b"300000"


async def test_a_reset_stream_keeps_its_slot_until_its_handler_has_stopped() -> None:
    """Rapid reset's other half: h2 forgets a reset stream at once, the proxy not before its handler ends.

    A real aiohttp ``web.Server`` behind the HTTP/2 connection (h2c), with a handler whose clean-up
    after cancellation takes as long as the test says: while it runs, its slot stays taken.
    """
    started, release = asyncio.Event(), asyncio.Event()

    async def slow_to_stop(request: web.BaseRequest) -> web.StreamResponse:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            await release.wait()  # e.g. an upstream connection being closed
            raise
        return web.Response()

    manager = web.Server(slow_to_stop)
    settings = ServerSettings(max_concurrent_streams=1, max_header_bytes=8192, max_header_count=100,
                              header_timeout=60, keepalive_timeout=60)
    port = free_port()
    listener = await asyncio.get_running_loop().create_server(
        lambda: ServerConnection(manager, settings, None), "127.0.0.1", port)
    raw = await RawH2.connect(port, ack=True)
    try:
        raw.headers(1, raw.header_block("/held"))
        await asyncio.wait_for(started.wait(), 30)
        raw.rst(1)
        raw.headers(3, raw.header_block("/next"))
        refused = await raw.read_until(lambda f: isinstance(f, RstStreamFrame) and f.stream_id == 3)
    finally:
        release.set()
        raw.close()
        listener.close()
        await manager.shutdown(1)
    assert refused.error_code == ErrorCodes.REFUSED_STREAM

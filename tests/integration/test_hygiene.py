"""Request hygiene on the wire: identity-header stripping, size limits, slowloris, smuggling.

Each attack is sent as raw bytes, and each test checks both that it was refused and
that nothing reached the upstream.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from aiohttp import web

from tests.conftest import Proxy, ProxyFactory, Upstream, UpstreamFactory, proxy_yaml, raw_exchange

pytestmark = pytest.mark.integration


async def echo(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    return web.json_response({"headers": [[k, v] for k, v in request.headers.items()], "body": body.decode()})


@pytest.fixture
async def pair(start_upstream: UpstreamFactory, start_proxy: ProxyFactory) -> tuple[Upstream, Proxy]:
    upstream = await start_upstream(echo)
    server = "  limits: {max_header_count: 50, max_header_bytes: 8KiB, header_timeout: 1s}"
    proxy = await start_proxy(proxy_yaml(upstream.url, server=server))
    return upstream, proxy


async def test_identity_headers_stripped_in_every_spelling(pair: tuple[Upstream, Proxy]) -> None:
    upstream, proxy = pair
    request = (b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
               b"X-Ztproxy-User: admin\r\nx-ztproxy-user: root\r\nX-ZTPROXY-EMAIL: ceo@corp.example\r\n"
               b"X_Ztproxy_User: admin\r\nx_ztproxy-groups: admins\r\nX-Ztproxy-Jwt-Assertion: forged\r\n"
               b"X-ZtProxy: bare\r\nX-Other: kept\r\n\r\n")
    data, _ = await raw_exchange(proxy.port, request)
    assert data.startswith(b"HTTP/1.1 200")
    received = json.loads(data.partition(b"\r\n\r\n")[2])["headers"]
    names = [name.lower().replace("_", "-") for name, _ in received]
    assert not [n for n in names if n.startswith("x-ztproxy")], received
    assert "x-other" in names
    assert len(upstream.requests) == 1


async def test_too_many_headers_get_431(pair: tuple[Upstream, Proxy]) -> None:
    upstream, proxy = pair
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(80))
    data, closed = await raw_exchange(proxy.port, b"GET / HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")
    assert data[9:12] == b"431", data[:100]
    assert closed
    assert upstream.requests == []


async def test_oversized_header_block_gets_431(pair: tuple[Upstream, Proxy]) -> None:
    upstream, proxy = pair
    big = b"".join(b"X-Big%d: %s\r\n" % (i, b"v" * 1000) for i in range(12))  # 12 KB > 8 KiB budget
    data, closed = await raw_exchange(proxy.port, b"GET / HTTP/1.1\r\nHost: x\r\n" + big + b"\r\n")
    assert data[9:12] == b"431", data[:100]
    assert closed
    one_huge = b"X-Huge: " + b"v" * 20000 + b"\r\n"
    data, closed = await raw_exchange(proxy.port, b"GET / HTTP/1.1\r\nHost: x\r\n" + one_huge + b"\r\n")
    assert data[9:12] == b"431", data[:100]
    assert closed
    assert upstream.requests == []


async def test_slowloris_headers_are_cut_off_at_the_deadline(pair: tuple[Upstream, Proxy]) -> None:
    upstream, proxy = pair
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    started = time.monotonic()
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")
    closed_after = None
    # Dribble a header line every 200 ms: always active, never finished.
    for index in range(40):
        try:
            writer.write(b"X-Slow-%d: 1\r\n" % index)
            await writer.drain()
        except ConnectionError:
            closed_after = time.monotonic() - started
            break
        try:
            chunk = await asyncio.wait_for(reader.read(1024), 0.2)
        except TimeoutError:
            continue
        if chunk.startswith(b"HTTP/1.1 408") or not chunk:
            closed_after = time.monotonic() - started
            break
    writer.close()
    assert closed_after is not None, "connection still open after 8 s of dribbled headers"
    assert closed_after < 4  # header_timeout is 1 s
    assert upstream.requests == []


async def test_idle_connection_without_request_is_closed(pair: tuple[Upstream, Proxy]) -> None:
    _, proxy = pair
    data, closed = await raw_exchange(proxy.port, b"", read_timeout=4)
    assert closed
    assert data.startswith(b"HTTP/1.1 408")


SMUGGLING = {
    "cl-and-te": (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
                  b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"),
    "double-cl": (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 40\r\n\r\n"
                  b"abcdGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"),
    "te-not-chunked-last": (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n"
                            b"0\r\n\r\n"),
    "te-obfuscated": (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n"
                      b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"),
    "te-space-before-colon": (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n"
                              b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"),
    "bare-lf-headers": b"GET / HTTP/1.1\nHost: x\nX-A: 1\n\n",
    "bare-lf-chunk": (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                      b"4\nabcd\n0\n\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"),
    "double-host": b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
    "missing-host": b"GET / HTTP/1.1\r\nX-A: 1\r\n\r\n",
    "obs-fold": b"GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n  folded\r\n\r\n",
    "bad-cl": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +4\r\n\r\nabcd",
}


@pytest.mark.parametrize("name", sorted(SMUGGLING))
async def test_smuggling_attempts_get_400_and_close(pair: tuple[Upstream, Proxy], name: str) -> None:
    upstream, proxy = pair
    data, closed = await raw_exchange(proxy.port, SMUGGLING[name], read_timeout=3)
    assert data[9:12] == b"400", data[:200]
    assert data.count(b"HTTP/1.") == 1  # one answer: nothing smuggled behind it
    assert closed
    assert all(request.path != "/smuggled" for request in upstream.requests)
    assert b"Traceback" not in data


@pytest.mark.parametrize("target", [
    b"/a%2fb", b"/a%2Fb", b"/a%5cb", b"/a\\b", b"/a%00b", b"/a%0d%0aX-Injected:%201", b"/%zz", b"/a%",
    b"/../../etc/passwd", b"/a/%2e%2e/%2e%2e/b",
])
async def test_bad_paths_get_400(pair: tuple[Upstream, Proxy], target: bytes) -> None:
    upstream, proxy = pair
    data, _ = await raw_exchange(proxy.port, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 400"), data[:100]
    assert upstream.requests == []


async def test_overlong_request_line_gets_414(start_upstream: UpstreamFactory, start_proxy: ProxyFactory) -> None:
    upstream = await start_upstream(echo)
    proxy = await start_proxy(proxy_yaml(upstream.url))  # default limits: 8 KiB line, 32 KiB headers
    data, closed = await raw_exchange(proxy.port, b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert data[9:12] == b"414", data[:100]
    assert closed
    assert upstream.requests == []

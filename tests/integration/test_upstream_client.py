"""The upstream HTTP/1.1 client on real loopback sockets: keep-alive, framing, refusals, timeouts, TLS, limits.

Most upstreams are scripted (``tests/support/scripted_upstream.py``) so they can write exact,
even malformed, bytes and count the connections they accept and see closed; where a real
server's reading matters (a chunked upload, keep-alive as a server does it) it is aiohttp.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import ssl
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from multidict import CIMultiDict

from tests.conftest import UpstreamFactory, free_port
from tests.support.posture import CertificateAuthority
from tests.support.scripted_upstream import (
    Script,
    ScriptedUpstream,
    UpstreamConnection,
    answer,
    answer_then_close,
    chunked_body,
    respond_in_turn,
)
from ztproxy.upstream_client import (
    Origin,
    UpstreamConnectError,
    UpstreamPool,
    UpstreamProtocolError,
    UpstreamResponse,
    UpstreamTimeoutError,
    encode_head,
)

pytestmark = pytest.mark.integration

HOST = ("Host", "upstream.test")
READ_TIMEOUT = 0.5
WITHIN = 2.0  # bound on any single exchange in these tests


async def body_of(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


class Lab:
    """Upstreams and pools of one test; pools are closed first, then the upstreams."""

    def __init__(self) -> None:
        self.upstreams: list[ScriptedUpstream] = []
        self.pools: list[UpstreamPool] = []

    async def upstream(self, script: Script, *, ssl_context: ssl.SSLContext | None = None) -> ScriptedUpstream:
        upstream = await ScriptedUpstream(script, ssl_context=ssl_context).start()
        self.upstreams.append(upstream)
        return upstream

    def pool(self, **options: Any) -> UpstreamPool:
        pool = UpstreamPool(**options)
        self.pools.append(pool)
        return pool

    async def close(self) -> None:
        for pool in self.pools:
            await pool.close()
        for upstream in self.upstreams:
            await upstream.close()


@pytest.fixture
async def lab() -> AsyncIterator[Lab]:
    lab = Lab()
    yield lab
    await lab.close()


async def fetch(pool: UpstreamPool, origin: Origin, method: str = "GET", target: str = "/", *,
                headers: Iterable[tuple[str, str]] = (), body: AsyncIterator[bytes] | None = None,
                chunked: bool = False, read_timeout: float = READ_TIMEOUT) -> tuple[UpstreamResponse, bytes]:
    """One whole exchange, bounded: the response (closed) and its body."""
    async with asyncio.timeout(WITHIN):
        response = await pool.request(origin, method, target, [HOST, *headers], body, chunked=chunked,
                                      read_timeout=read_timeout)
        async with response:
            return response, await response.read()


def closed_by_client(upstream: ScriptedUpstream, index: int) -> bool:
    return len(upstream.connections) > index and upstream.connections[index].closed_by_client.is_set()


# -- 1. keep-alive

async def test_sequential_gets_share_one_connection(lab: Lab) -> None:
    upstream = await lab.upstream(respond_in_turn(*[answer(b"answer %d" % n) for n in range(5)]))
    pool = lab.pool()
    for n in range(5):
        response, body = await fetch(pool, upstream.origin(), target=f"/{n}")
        assert (response.status, body) == (200, b"answer %d" % n)
    assert len(upstream.connections) == 1
    assert [request.request_line for request in upstream.connections[0].requests] == [
        f"GET /{n} HTTP/1.1" for n in range(5)]
    assert (pool.open_connections, pool.idle_connections) == (1, 1)


REUSE = {  # the answer, given twice: how many requests each connection carried
    "http/1.1 content-length": (answer(b"ok"), [2]),
    "http/1.1 chunked": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked_body(b"o", b"k"), [2]),
    "http/1.0 keep-alive": (answer(b"ok", "Connection: keep-alive", version="HTTP/1.0"), [2]),
    "connection: close": (answer(b"ok", "Connection: close"), [1, 1]),
    "http/1.0 without keep-alive": (answer(b"ok", version="HTTP/1.0"), [1, 1]),
}


@pytest.mark.parametrize(("wire", "per_connection"), REUSE.values(), ids=REUSE.keys())
async def test_connection_reuse_follows_the_answer(lab: Lab, wire: bytes, per_connection: list[int]) -> None:
    # The upstream never closes a connection itself: keeping or closing it is the client's part.
    upstream = await lab.upstream(respond_in_turn(wire, wire))
    pool = lab.pool()
    for _ in range(2):
        assert (await fetch(pool, upstream.origin()))[1] == b"ok"
    assert [len(conn.requests) for conn in upstream.connections] == per_connection
    if len(per_connection) > 1:
        await upstream.wait_until(lambda: closed_by_client(upstream, 0))


async def test_real_aiohttp_upstream_serves_sequential_requests_on_one_connection(
        start_upstream: UpstreamFactory, lab: Lab) -> None:
    async def peer(request: web.Request) -> web.Response:
        return web.Response(text=str(request.transport.get_extra_info("peername")[1]))  # type: ignore[union-attr]

    upstream = await start_upstream(peer)
    pool = lab.pool()
    origin = Origin("http", "127.0.0.1", upstream.port)
    client_ports = {(await fetch(pool, origin, target=f"/{n}"))[1] for n in range(3)}
    assert len(client_ports) == 1


# -- 2. HEAD

async def test_head_with_content_length_completes_at_once_and_next_answer_is_its_own(lab: Lab) -> None:
    upstream = await lab.upstream(respond_in_turn(
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nX-Answer: head\r\n\r\n",
        answer(b"0123456789", "X-Answer: get")))
    pool = lab.pool()
    async with asyncio.timeout(1):  # well before read_timeout: nobody waits for those 10 bytes
        head, head_body = await fetch(pool, upstream.origin(), "HEAD", read_timeout=5.0)
    assert (head.status, head.headers["X-Answer"], head.content_length, head_body) == (200, "head", 10, b"")
    get, get_body = await fetch(pool, upstream.origin(), "GET")
    assert (get.status, get.headers["X-Answer"], get_body) == (200, "get", b"0123456789")
    assert len(upstream.connections) == 1
    assert [request.method for request in upstream.connections[0].requests] == ["HEAD", "GET"]


# -- 3. interim answers

INTERIM = [b"HTTP/1.1 100 Continue\r\n\r\n",
           b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n",
           answer(b"final", "X-Final: yes")]


@pytest.mark.parametrize("parts", [[b"".join(INTERIM)], INTERIM], ids=["one write", "three writes"])
async def test_interim_answers_are_skipped(lab: Lab, parts: list[bytes]) -> None:
    upstream = await lab.upstream(respond_in_turn(parts, pause=0.02))
    response, body = await fetch(lab.pool(), upstream.origin())
    assert (response.status, response.reason, body) == (200, "OK", b"final")
    assert response.raw_headers == [("X-Final", "yes"), ("Content-Length", "5")]


# -- 4. 204 and 304

@pytest.mark.parametrize("status", ["204 No Content", "304 Not Modified"])
async def test_no_body_for_204_and_304_whatever_content_length_says(lab: Lab, status: str) -> None:
    upstream = await lab.upstream(respond_in_turn(
        f"HTTP/1.1 {status}\r\nContent-Length: 5\r\n\r\n".encode(), answer(b"hello", "X-Answer: next")))
    pool = lab.pool()
    async with asyncio.timeout(1):
        response, body = await fetch(pool, upstream.origin(), read_timeout=5.0)
    assert (response.status, body) == (int(status[:3]), b"")
    following, following_body = await fetch(pool, upstream.origin())
    assert (following.headers["X-Answer"], following_body) == ("next", b"hello")
    assert len(upstream.connections) == 1


# -- 5. body framing

async def test_chunked_body_split_across_writes_arrives_intact(lab: Lab) -> None:
    wire = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            + chunked_body(b"hello", b" ", b"chunked ", b"world"))
    parts = [wire[:50], wire[50:57], wire[57:58], wire[58:75], wire[75:]]
    upstream = await lab.upstream(respond_in_turn(parts, pause=0.01))
    response, body = await fetch(lab.pool(), upstream.origin())
    assert (response.status, response.content_length, body) == (200, None, b"hello chunked world")


async def test_close_delimited_body_is_read_to_eof_and_not_reused(lab: Lab) -> None:
    async def script(conn: UpstreamConnection) -> None:
        if await conn.read_request() is None:
            return
        if conn.index == 0:
            await conn.send(b"HTTP/1.1 200 OK\r\nX-Framing: none\r\n\r\nabc", b"def", pause=0.02)
            return  # closing the connection ends that body
        await conn.send(answer(b"second"))
        await conn.wait_for_client_close()

    upstream = await lab.upstream(script)
    pool = lab.pool()
    response, body = await fetch(pool, upstream.origin())
    assert (response.status, response.content_length, body) == (200, None, b"abcdef")
    assert pool.open_connections == 0
    assert (await fetch(pool, upstream.origin()))[1] == b"second"
    assert len(upstream.connections) == 2


# -- 6. headers

async def test_repeated_headers_keep_their_order(lab: Lab) -> None:
    upstream = await lab.upstream(respond_in_turn(answer(
        b"abc", "Set-Cookie: a=1; Path=/", "X-Between: yes", "Set-Cookie: b=2; Secure")))
    response, _ = await fetch(lab.pool(), upstream.origin())
    assert response.raw_headers == [("Set-Cookie", "a=1; Path=/"), ("X-Between", "yes"),
                                    ("Set-Cookie", "b=2; Secure"), ("Content-Length", "3")]
    assert isinstance(response.headers, CIMultiDict)
    assert response.headers.getall("set-cookie") == ["a=1; Path=/", "b=2; Secure"]
    assert response.content_length == 3


# -- 7. refused answers

FILLER = "".join(f"X-Filler-{n:02}: {'f' * 40}\r\n" for n in range(30))  # about 1.6 KiB of head
REFUSED: dict[str, tuple[bytes, dict[str, Any]]] = {
    "garbage status line": (b"HTTX/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", {}),
    "content-length with chunked": (
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked_body(b"abc"), {}),
    "two content-lengths": (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", {}),
    "nul in a header value": (b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 0\r\n\r\n", {}),
    "bare cr in a header value": (b"HTTP/1.1 200 OK\r\nX-A: a\rb\r\nContent-Length: 0\r\n\r\n", {}),
    "head over max_header_bytes": (f"HTTP/1.1 200 OK\r\n{FILLER}Content-Length: 0\r\n\r\n".encode(),
                                   {"max_header_bytes": 1024}),
    "101 to a plain request": (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                               b"Connection: Upgrade\r\n\r\n", {}),
}


@pytest.mark.parametrize(("wire", "options"), REFUSED.values(), ids=REFUSED.keys())
async def test_malformed_answer_is_a_protocol_error(lab: Lab, wire: bytes, options: dict[str, Any]) -> None:
    upstream = await lab.upstream(respond_in_turn(wire))
    pool = lab.pool(**options)
    with pytest.raises(UpstreamProtocolError):
        await fetch(pool, upstream.origin())
    assert pool.open_connections == 0
    await upstream.wait_until(lambda: closed_by_client(upstream, 0))


async def test_head_line_that_never_ends_is_refused_once_over_max_header_bytes(lab: Lab) -> None:
    # One header value streamed without end: the limit must hold while it arrives, not only
    # once the line is complete, or the client buffers whatever the upstream sends.
    async def script(conn: UpstreamConnection) -> None:
        if await conn.read_request() is not None:
            await conn.send(b"HTTP/1.1 200 OK\r\nX-Endless: ", *[b"v" * 1024] * 64, pause=0.002)
            await conn.wait_for_client_close()

    upstream = await lab.upstream(script)
    with pytest.raises(UpstreamProtocolError):
        await fetch(lab.pool(max_header_bytes=4096), upstream.origin(), read_timeout=0.3)


async def test_body_shorter_than_content_length_fails_while_reading(lab: Lab) -> None:
    upstream = await lab.upstream(answer_then_close(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123",
                                                    linger=0.05))
    pool = lab.pool()
    async with asyncio.timeout(WITHIN):
        response = await pool.request(upstream.origin(), "GET", "/", [HOST], read_timeout=READ_TIMEOUT)
        received = b""
        with pytest.raises(UpstreamProtocolError):
            async for chunk in response.iter_chunks():
                received += chunk
        response.close()
    assert received == b"0123"
    assert pool.open_connections == 0


async def test_new_connection_closed_without_answer_is_a_protocol_error_and_not_retried(lab: Lab) -> None:
    upstream = await lab.upstream(respond_in_turn(None, answer(b"retried")))
    pool = lab.pool()
    with pytest.raises(UpstreamProtocolError):
        await fetch(pool, upstream.origin())
    assert len(upstream.connections) == 1
    assert pool.open_connections == 0


# -- 8. bytes after the answer

async def test_unsolicited_bytes_after_an_answer_retire_the_connection(lab: Lab) -> None:
    async def script(conn: UpstreamConnection) -> None:
        if await conn.read_request() is None:
            return
        if conn.index == 0:
            await conn.send(answer(b"first"), answer(b"unsolicited", "X-Injected: yes"), pause=0.05)
            await conn.wait_for_client_close()
            return
        await conn.send(answer(b"second"))
        await conn.wait_for_client_close()

    upstream = await lab.upstream(script)
    pool = lab.pool()
    assert (await fetch(pool, upstream.origin()))[1] == b"first"
    await upstream.wait_until(lambda: closed_by_client(upstream, 0))
    response, body = await fetch(pool, upstream.origin())
    assert (body, "X-Injected" in response.headers) == (b"second", False)
    assert len(upstream.connections) == 2


async def test_second_answer_in_the_same_read_never_reaches_the_caller(lab: Lab) -> None:
    # A second, unsolicited answer glued to the first (no reason phrase) must not lend the
    # first one its status or headers: refuse the exchange, or give the first answer alone.
    glued = answer(b"hi") + b"HTTP/1.1 404\r\nX-Injected: yes\r\nContent-Length: 0\r\n\r\n"
    upstream = await lab.upstream(respond_in_turn(glued, answer(b"second")))
    pool = lab.pool()
    try:
        response, body = await fetch(pool, upstream.origin())
    except UpstreamProtocolError:
        pass
    else:
        assert (response.status, body) == (200, b"hi")
        assert response.raw_headers == [("Content-Length", "2")]
    assert (await fetch(pool, upstream.origin()))[1] == b"second"
    assert len(upstream.connections) == 2


async def test_reason_phrase_split_across_reads_arrives_whole(lab: Lab) -> None:
    upstream = await lab.upstream(respond_in_turn(
        [b"HTTP/1.1 200 Every", b"thing Fine\r\nContent-Length: 0\r\n\r\n"], pause=0.02))
    response, _ = await fetch(lab.pool(), upstream.origin())
    assert (response.status, response.reason) == (200, "Everything Fine")


# -- 9. stale keep-alive connections

async def test_get_on_a_connection_closed_before_answering_is_retried_once(lab: Lab) -> None:
    upstream = await lab.upstream(respond_in_turn(answer(b"first"), None, answer(b"second")))
    pool = lab.pool()
    assert (await fetch(pool, upstream.origin(), target="/1"))[1] == b"first"
    assert (await fetch(pool, upstream.origin(), target="/2"))[1] == b"second"
    first, retry = upstream.connections
    assert [request.request_line for request in first.requests] == ["GET /1 HTTP/1.1", "GET /2 HTTP/1.1"]
    assert [request.head for request in retry.requests] == [first.requests[1].head]


async def test_post_with_body_on_a_stale_connection_is_not_retried(lab: Lab) -> None:
    upstream = await lab.upstream(respond_in_turn(answer(b"first"), None, answer(b"must not be reached")))
    pool = lab.pool()
    assert (await fetch(pool, upstream.origin()))[1] == b"first"
    with pytest.raises(UpstreamProtocolError):
        await fetch(pool, upstream.origin(), "POST", headers=[("Content-Length", "4")], body=body_of(b"data"))
    assert len(upstream.connections) == 1
    assert [(request.method, request.body) for request in upstream.requests] == [("GET", b""), ("POST", b"data")]
    assert pool.open_connections == 0


# -- 10. timeouts

async def test_upstream_that_never_answers_times_out(lab: Lab) -> None:
    upstream = await lab.upstream(respond_in_turn())
    pool = lab.pool()
    started = time.monotonic()
    with pytest.raises(UpstreamTimeoutError):
        await fetch(pool, upstream.origin(), read_timeout=0.2)
    assert time.monotonic() - started >= 0.1  # it did wait for the upstream, about read_timeout
    assert pool.open_connections == 0
    await upstream.wait_until(lambda: closed_by_client(upstream, 0))


async def test_stalled_body_times_out_while_iterating(lab: Lab) -> None:
    upstream = await lab.upstream(respond_in_turn(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01234"))
    pool = lab.pool()
    received = b""
    async with asyncio.timeout(WITHIN):
        async with await pool.request(upstream.origin(), "GET", "/", [HOST], read_timeout=0.2) as response:
            assert response.status == 200
            with pytest.raises(UpstreamTimeoutError):
                async for chunk in response.iter_chunks():
                    received += chunk
    assert received == b"01234"
    assert pool.open_connections == 0


async def test_body_trickling_longer_than_read_timeout_completes(lab: Lab) -> None:
    read_timeout = 0.2
    pieces = [b"piece %d;" % n for n in range(8)]  # 8 gaps of read_timeout/3: about 2.7 x read_timeout
    parts = [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"]
    parts += [b"%x\r\n%b\r\n" % (len(piece), piece) for piece in pieces] + [b"0\r\n\r\n"]
    upstream = await lab.upstream(respond_in_turn(parts, pause=read_timeout / 3))
    started = time.monotonic()
    _, body = await fetch(lab.pool(), upstream.origin(), read_timeout=read_timeout)
    assert body == b"".join(pieces)
    assert time.monotonic() - started > 2 * read_timeout  # the test did outlast the timeout


# -- 11. connection refused

async def test_port_nobody_listens_on_is_a_connect_error(lab: Lab) -> None:
    pool = lab.pool()
    with pytest.raises(UpstreamConnectError):
        await fetch(pool, Origin("http", "127.0.0.1", free_port()))
    assert pool.open_connections == 0


# -- 12. TLS

class UpstreamPki:
    def __init__(self, directory: Path) -> None:
        self.ca = CertificateAuthority("Upstream CA", directory)
        self.localhost = self.ca.issue(common_name="localhost", dns_names=["localhost"], ips=["127.0.0.1"],
                                       server=True)
        self.elsewhere = self.ca.issue(common_name="elsewhere.test", dns_names=["elsewhere.test"], server=True)

    def server_context(self, localhost: bool = True) -> ssl.SSLContext:
        issued = self.localhost if localhost else self.elsewhere
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(issued.cert_file, issued.key_file)
        return context

    def trusting_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca.cert_file))


@pytest.fixture
def pki(tmp_path: Path) -> UpstreamPki:
    return UpstreamPki(tmp_path)


async def test_tls_upstream_trusted_by_the_pool_context(lab: Lab, pki: UpstreamPki) -> None:
    upstream = await lab.upstream(respond_in_turn(answer(b"secure")), ssl_context=pki.server_context())
    pool = lab.pool(ssl_context=pki.trusting_context())
    response, body = await fetch(pool, upstream.origin("https", "localhost"))
    assert (response.status, body) == (200, b"secure")


@pytest.mark.parametrize("case", ["ca not trusted", "certificate for another name"])
async def test_tls_upstream_failing_verification_is_a_connect_error(lab: Lab, pki: UpstreamPki, case: str) -> None:
    upstream = await lab.upstream(respond_in_turn(answer(b"secure")),
                                  ssl_context=pki.server_context(localhost=case == "ca not trusted"))
    pool = lab.pool() if case == "ca not trusted" else lab.pool(ssl_context=pki.trusting_context())
    with pytest.raises(UpstreamConnectError) as caught:
        await fetch(pool, upstream.origin("https", "localhost"))
    assert isinstance(caught.value.__cause__, ssl.SSLCertVerificationError)
    assert upstream.requests == []
    assert pool.open_connections == 0


# -- 13. request heads

def test_encode_head_writes_the_request_line_and_fields() -> None:
    head = encode_head("GET", "/a?b=c", [("Host", "upstream.test"), ("X-Repeated", "1"), ("X-Repeated", "2")])
    assert head == b"GET /a?b=c HTTP/1.1\r\nHost: upstream.test\r\nX-Repeated: 1\r\nX-Repeated: 2\r\n\r\n"


SPLITTING = {
    "cr lf in a value": ("X-A", "1\r\nX-Injected: yes"),
    "lf in a value": ("X-A", "1\nX-Injected: yes"),
    "cr in a value": ("X-A", "1\rX-Injected: yes"),
    "nul in a value": ("X-A", "1\x00"),
    "cr lf in a name": ("X-Injected: yes\r\nX-A", "1"),
    "lf in a name": ("X-A\n", "1"),
    "nul in a name": ("X-\x00A", "1"),
}


@pytest.mark.parametrize("field", SPLITTING.values(), ids=SPLITTING.keys())
def test_encode_head_refuses_cr_lf_nul_in_fields(field: tuple[str, str]) -> None:
    with pytest.raises(ValueError):
        encode_head("GET", "/", [HOST, field])


@pytest.mark.parametrize("field", SPLITTING.values(), ids=SPLITTING.keys())
async def test_request_refuses_a_splitting_field_before_sending_anything(lab: Lab, field: tuple[str, str]) -> None:
    upstream = await lab.upstream(respond_in_turn(answer(b"ok"), answer(b"ok")))
    pool = lab.pool()
    assert (await fetch(pool, upstream.origin(), target="/before"))[1] == b"ok"
    with pytest.raises(ValueError):
        await fetch(pool, upstream.origin(), target="/refused", headers=[field])
    assert (await fetch(pool, upstream.origin(), target="/after"))[1] == b"ok"
    assert [request.request_line for request in upstream.requests] == ["GET /before HTTP/1.1", "GET /after HTTP/1.1"]


# -- 14. request bodies

async def test_body_with_content_length_is_sent_as_is(lab: Lab) -> None:
    upstream = await lab.upstream(respond_in_turn(answer(b"stored")))
    _, body = await fetch(lab.pool(), upstream.origin(), "PUT", headers=[("Content-Length", "11")],
                          body=body_of(b"hello", b"", b" world"))
    assert body == b"stored"
    (request,) = upstream.requests
    assert (request.header("Content-Length"), request.header("Transfer-Encoding"), request.body) == (
        "11", None, b"hello world")


async def test_chunked_body_is_read_exactly_by_a_real_server(start_upstream: UpstreamFactory, lab: Lab) -> None:
    async def digest(request: web.Request) -> web.Response:
        data = await request.read()
        return web.json_response({"transfer_encoding": request.headers.get("Transfer-Encoding"),
                                  "size": len(data), "sha256": hashlib.sha256(data).hexdigest()})

    upstream = await start_upstream(digest)
    parts = [b"first;", b"", os.urandom(100_000), b";last"]
    response, body = await fetch(lab.pool(), Origin("http", "127.0.0.1", upstream.port), "POST",
                                 body=body_of(*parts), chunked=True)
    assert response.status == 200
    sent = b"".join(parts)
    assert json.loads(body) == {"transfer_encoding": "chunked", "size": len(sent),
                                "sha256": hashlib.sha256(sent).hexdigest()}


class BodySourceFailed(Exception):
    pass


async def test_failing_body_source_raises_its_own_error_and_closes_the_connection(lab: Lab) -> None:
    failure = BodySourceFailed("the client went away")

    async def failing_body() -> AsyncIterator[bytes]:
        yield b"part"
        await asyncio.sleep(0.01)
        raise failure

    upstream = await lab.upstream(respond_in_turn(answer(b"never")))
    pool = lab.pool()
    with pytest.raises(BodySourceFailed) as caught:
        await fetch(pool, upstream.origin(), "POST", headers=[("Content-Length", "100")], body=failing_body())
    assert caught.value is failure
    assert pool.open_connections == 0
    await upstream.wait_until(lambda: closed_by_client(upstream, 0))
    assert upstream.requests == []  # the upstream never got a whole request


# -- 15. pool limit

async def test_pool_limit_bounds_open_connections(lab: Lab) -> None:
    async def slow(conn: UpstreamConnection) -> None:
        while await conn.read_request() is not None:
            await asyncio.sleep(0.1)
            await conn.send(answer(b"slow"))

    upstream = await lab.upstream(slow)
    pool = lab.pool(limit=2)
    results = await asyncio.gather(*[fetch(pool, upstream.origin(), target=f"/{n}") for n in range(5)])
    assert [(response.status, body) for response, body in results] == [(200, b"slow")] * 5
    assert upstream.most_open == 2
    assert len(upstream.requests) == 5


async def test_waiter_cancelled_after_its_turn_came_passes_the_turn_on(lab: Lab) -> None:
    upstream = await lab.upstream(respond_in_turn(*[answer(b"ok")] * 3))
    pool = lab.pool(limit=1, idle_timeout=30.0)
    holder = await pool.request(upstream.origin(), "GET", "/holder", [HOST], read_timeout=READ_TIMEOUT)
    await holder.read()
    cancelled = asyncio.create_task(fetch(pool, upstream.origin(), target="/cancelled"))
    waiting = asyncio.create_task(fetch(pool, upstream.origin(), target="/waiting"))
    await asyncio.sleep(0.02)  # both are queued behind the holder
    holder.close()  # the turn goes to the first waiter...
    cancelled.cancel()  # ...which gives up before it runs
    async with asyncio.timeout(1):
        assert (await waiting)[1] == b"ok"
    with pytest.raises(asyncio.CancelledError):
        await cancelled


# -- 16. idle timeout

async def test_idle_connection_is_closed_after_idle_timeout(lab: Lab) -> None:
    upstream = await lab.upstream(respond_in_turn(answer(b"ok")))
    pool = lab.pool(idle_timeout=0.2)
    await fetch(pool, upstream.origin())
    assert pool.idle_connections == 1
    await upstream.wait_until(lambda: closed_by_client(upstream, 0))
    await upstream.wait_until(lambda: pool.open_connections == 0)


# -- 17. cancellation

async def test_cancelled_request_closes_its_connection(lab: Lab) -> None:
    upstream = await lab.upstream(respond_in_turn())
    pool = lab.pool()
    task = asyncio.create_task(fetch(pool, upstream.origin(), read_timeout=5.0))
    await upstream.wait_until(lambda: len(upstream.requests) == 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert pool.open_connections == 0
    await upstream.wait_until(lambda: closed_by_client(upstream, 0))


# -- 18. large bodies

def framed_pieces(data: bytes, size: int, framing: str) -> Sequence[bytes]:
    pieces = [data[start:start + size] for start in range(0, len(data), size)]
    if framing == "content-length":
        return [b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(data), *pieces]
    return [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            *[b"%x\r\n%b\r\n" % (len(piece), piece) for piece in pieces], b"0\r\n\r\n"]


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_large_body_reaches_a_slow_consumer_intact(lab: Lab, framing: str) -> None:
    data = os.urandom(8 * 1024 * 1024)
    upstream = await lab.upstream(respond_in_turn(framed_pieces(data, 256 * 1024, framing)))
    pool = lab.pool()
    digest, size, chunks = hashlib.sha256(), 0, 0
    async with asyncio.timeout(5):
        async with await pool.request(upstream.origin(), "GET", "/big", [HOST], read_timeout=1.0) as response:
            async for chunk in response.iter_chunks():
                digest.update(chunk)
                size += len(chunk)
                chunks += 1
                if chunks % 4 == 0:
                    await asyncio.sleep(0.001)  # slower than the upstream writes
    assert (size, digest.hexdigest()) == (len(data), hashlib.sha256(data).hexdigest())

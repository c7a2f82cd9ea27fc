"""HTTP/1.1 on the wire: order, limits in pieces, early answers, upgrades after requests.

What the hygiene, forwarding, streaming and drain tests already pin is not repeated
here. Every request is raw bytes on a socket, many of them arriving in pieces, as on a
real network. (These were written to gate a data-plane server of our own on llhttp,
bench/README.md "A second spike"; they hold for the listener as it is.)
"""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from aiohttp import WSMsgType, web

from tests.conftest import Proxy, ProxyFactory, Upstream, UpstreamFactory, proxy_yaml, raw_exchange

pytestmark = pytest.mark.integration


async def echo(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    return web.json_response({"path": request.raw_path, "headers": [[k, v] for k, v in request.headers.items()],
                              "body": body.decode()})


async def socket_echo(request: web.Request) -> web.StreamResponse:
    socket = web.WebSocketResponse()
    await socket.prepare(request)
    async for message in socket:
        if message.type is WSMsgType.TEXT:
            await socket.send_str("echo:" + message.data)
    return socket


@pytest.fixture
async def pair(start_upstream: UpstreamFactory, start_proxy: ProxyFactory) -> tuple[Upstream, Proxy]:
    upstream = await start_upstream(routes=[web.get("/ws", socket_echo), web.route("*", "/{path:.*}", echo)])
    server = "  limits: {max_header_count: 50, max_header_bytes: 8KiB, max_line_bytes: 4KiB, header_timeout: 2s}"
    closed = f"""
  - name: closed
    path: /closed
    upstream: {upstream.url}
"""
    routes = closed + f"""
  - name: sockets
    path: /ws
    upstream: {upstream.url}
    websockets: true
    allow: [{{public: true}}]
"""
    return upstream, await start_proxy(proxy_yaml(upstream.url, server=server, extra_routes=routes))


async def read_answers(reader: asyncio.StreamReader, count: int) -> list[tuple[bytes, bytes]]:
    """``count`` responses with Content-Length bodies: (head, body) each."""
    answers = []
    for _ in range(count):
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        answers.append((head, await asyncio.wait_for(reader.readexactly(length), 10)))
    return answers


async def test_pipelined_requests_are_answered_in_order(pair: tuple[Upstream, Proxy]) -> None:
    upstream, proxy = pair
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    burst = b"".join(b"GET /n%d HTTP/1.1\r\nHost: x\r\n\r\n" % number for number in range(5))
    burst += b"POST /n5 HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nbody"
    for at in range(0, len(burst), 7):  # in pieces, split anywhere
        writer.write(burst[at:at + 7])
        await writer.drain()
    answers = await read_answers(reader, 6)
    writer.close()
    assert [json.loads(body)["path"] for _, body in answers] == [f"/n{number}" for number in range(6)]
    assert json.loads(answers[-1][1])["body"] == "body"
    assert all(head.startswith(b"HTTP/1.1 200") for head, _ in answers)


async def test_garbage_after_a_good_request_is_refused_and_nothing_behind_it_passes(
        pair: tuple[Upstream, Proxy]) -> None:
    upstream, proxy = pair
    data, closed = await raw_exchange(proxy.port, b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n"
                                                  b"GET /second HTTP/1.1\nHost: x\n\n"
                                                  b"GET /third HTTP/1.1\r\nHost: x\r\n\r\n")
    # aiohttp refuses the segment as a whole: /first, parsed with the bad request behind it,
    # may get the 400 too. What matters: one refusal, a close, nothing behind it upstream.
    assert data.count(b" 400 Bad Request") == 1, data[:200]
    assert closed
    assert [request.path for request in upstream.requests] in ([], ["/first"])


async def test_limits_hold_when_the_head_arrives_in_pieces(pair: tuple[Upstream, Proxy]) -> None:
    upstream, proxy = pair
    # One field far over the 8 KiB budget, sent 1 KiB at a time: refused before it ends,
    # not buffered whole by the parser.
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nX-Huge: ")
    answer = b""
    for _ in range(64):
        try:
            writer.write(b"v" * 1024)
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(1024), 0.2)
        except TimeoutError:
            continue
        except ConnectionError:
            break
        if answer:
            break
    writer.close()
    assert answer[9:12] == b"431", answer[:100]
    # A request target over max_line_bytes, in pieces: 414.
    target = b"/" + b"a" * 5000
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    for at in range(0, len(target), 500):
        writer.write((b"GET " if at == 0 else b"") + target[at:at + 500])
        await writer.drain()
    writer.write(b" HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(1024), 10)
    writer.close()
    assert answer[9:12] == b"414", answer[:100]
    assert upstream.requests == []


async def test_an_upload_refused_before_its_body_gets_the_whole_answer(pair: tuple[Upstream, Proxy]) -> None:
    upstream, proxy = pair
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    size = 8 * 1024 * 1024
    writer.write(b"POST /closed/upload HTTP/1.1\r\nHost: x\r\nAccept: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n" % size)
    writer.write(b"x" * 65536)  # the client goes on sending while the answer comes back
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 403"), head
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    body = await asyncio.wait_for(reader.readexactly(length), 10)
    assert json.loads(body)["error"] == "access-denied"
    # The rest of the body is read and dropped, or the connection ends: the next request
    # on it is answered or refused by a close, never left hanging.
    try:
        for _ in range(size // 65536 - 1):
            writer.write(b"x" * 65536)
            await writer.drain()
        writer.write(b"GET /after HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        after = await asyncio.wait_for(reader.read(65536), 15)
    except ConnectionError:
        after = b""
    writer.close()
    assert after == b"" or after.startswith(b"HTTP/1.1 200"), after[:100]
    assert all(request.path != "/closed/upload" for request in upstream.requests)


async def test_trailing_whitespace_is_not_part_of_a_field_value(pair: tuple[Upstream, Proxy]) -> None:
    _, proxy = pair
    # RFC 9110 5.5: "x \t " names the host x; read whole it would be no valid host (a 400).
    data, _ = await raw_exchange(proxy.port, b"GET / HTTP/1.1\r\nHost: x \t \r\nConnection: close\r\n"
                                             b"X-Spaced: value \t \r\n\r\n")
    assert data.startswith(b"HTTP/1.1 200"), data[:200]
    received = dict(json.loads(data.partition(b"\r\n\r\n")[2])["headers"])
    assert received["X-Spaced"] == "value"


async def test_http10_request_without_host_is_served_and_closed(pair: tuple[Upstream, Proxy]) -> None:
    _, proxy = pair
    data, closed = await raw_exchange(proxy.port, b"GET /old HTTP/1.0\r\n\r\n")
    assert data.startswith(b"HTTP/1.0 200") or data.startswith(b"HTTP/1.1 200"), data[:100]
    assert closed


async def test_a_websocket_after_requests_on_the_same_connection(pair: tuple[Upstream, Proxy]) -> None:
    _, proxy = pair
    # A request, then the upgrade, on one kept-alive connection: the socket is taken over
    # after the first answer.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
        async with session.get(f"{proxy.url}/before") as response:
            assert response.status == 200
        async with session.ws_connect(f"{proxy.url}/ws") as socket:
            await socket.send_str("hi")
            message = await asyncio.wait_for(socket.receive(), 10)
            assert message.data == "echo:hi"
    # Pipelined: an HTTP request and the upgrade in one write, frames after the 101.
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n"
                 b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    (head, body), = await read_answers(reader, 1)
    assert json.loads(body)["path"] == "/first"
    switch = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert switch.startswith(b"HTTP/1.1 101"), switch
    masked = bytes(byte ^ mask for byte, mask in zip(b"yo", b"\x01\x02", strict=True))
    writer.write(bytes([0x81, 0x82, 1, 2, 3, 4]) + masked)  # FIN, text, masked, 2 bytes (RFC 6455 5.2)
    frame = await asyncio.wait_for(reader.readexactly(2 + len("echo:yo")), 10)
    assert frame[2:] == b"echo:yo"
    writer.close()

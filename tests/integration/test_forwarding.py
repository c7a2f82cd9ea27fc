"""Forwarding against a real upstream server: what reaches the app, and what comes back."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import ProxyFactory, UpstreamFactory, proxy_yaml, raw_exchange

pytestmark = pytest.mark.integration


async def echo(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    return web.json_response({"method": request.method, "path": request.raw_path, "body_len": len(body),
                              "headers": [[k, v] for k, v in request.headers.items()]})


def header_names(data: dict[str, object]) -> list[str]:
    return [name.lower() for name, _ in data["headers"]]  # type: ignore[union-attr]


def header(data: dict[str, object], name: str) -> list[str]:
    return [value for key, value in data["headers"] if key.lower() == name]  # type: ignore[union-attr]


async def test_get_reaches_upstream_with_path_and_query(start_upstream: UpstreamFactory,
                                                        start_proxy: ProxyFactory,
                                                        client: aiohttp.ClientSession) -> None:
    upstream = await start_upstream(echo)
    proxy = await start_proxy(proxy_yaml(upstream.url))
    async with client.get(f"{proxy.url}/some/path?q=1&b=%20x") as response:
        assert response.status == 200
        data = await response.json()
    assert data["path"] == "/some/path?q=1&b=%20x"
    assert response.headers["X-Request-Id"]
    assert header(data, "x-request-id") == [response.headers["X-Request-Id"]]


async def test_upstream_receives_the_canonical_path_that_was_authorised(
        start_upstream: UpstreamFactory, start_proxy: ProxyFactory) -> None:
    upstream = await start_upstream(echo)
    proxy = await start_proxy(proxy_yaml(upstream.url, allow="[]", extra_routes=f"""
  - name: public
    path: /public
    upstream: {upstream.url}
    allow: [{{public: true}}]
"""))
    # The dot segments resolve outside /public: the canonical path /secret belongs to the deny-all route.
    data, _ = await raw_exchange(proxy.port, b"GET /public/../secret HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 403")
    assert upstream.requests == []
    data, _ = await raw_exchange(proxy.port, b"GET /public/./a//b/%2e%2e/c HTTP/1.1\r\nHost: x\r\n"
                                 b"Connection: close\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 200")
    assert upstream.requests[-1].raw_path == "/public/a/c"


async def test_post_body_and_chunked_request_body(start_upstream: UpstreamFactory, start_proxy: ProxyFactory,
                                                  client: aiohttp.ClientSession) -> None:
    upstream = await start_upstream(echo)
    proxy = await start_proxy(proxy_yaml(upstream.url))
    async with client.post(f"{proxy.url}/upload", data=b"x" * 300_000) as response:
        assert (await response.json())["body_len"] == 300_000

    async def chunks():  # type: ignore[no-untyped-def]
        for _ in range(10):
            yield b"y" * 1000

    async with client.post(f"{proxy.url}/upload", data=chunks()) as response:
        data = await response.json()
    assert data["body_len"] == 10_000
    assert header(data, "transfer-encoding") == ["chunked"]


async def test_repeated_response_headers_and_chunked_response(start_upstream: UpstreamFactory,
                                                              start_proxy: ProxyFactory,
                                                              client: aiohttp.ClientSession) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.headers.add("Set-Cookie", "a=1; Path=/")
        response.headers.add("Set-Cookie", "b=2; Path=/")
        response.enable_chunked_encoding()
        await response.prepare(request)
        for index in range(5):
            await response.write(f"part{index};".encode())
        await response.write_eof()
        return response

    upstream = await start_upstream(handler)
    proxy = await start_proxy(proxy_yaml(upstream.url))
    async with client.get(f"{proxy.url}/") as response:
        assert response.headers.getall("Set-Cookie") == ["a=1; Path=/", "b=2; Path=/"]
        assert response.headers.get("Transfer-Encoding") == "chunked"
        assert await response.text() == "part0;part1;part2;part3;part4;"


async def test_head_204_304_have_no_body(start_upstream: UpstreamFactory, start_proxy: ProxyFactory) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        if request.path == "/nocontent":
            return web.Response(status=204)
        if request.path == "/notmodified":
            return web.Response(status=304, headers={"ETag": '"v1"'})
        return web.Response(text="x" * 1234)

    upstream = await start_upstream(handler)
    proxy = await start_proxy(proxy_yaml(upstream.url))
    data, _ = await raw_exchange(proxy.port, b"HEAD /file HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"Content-Length: 1234" in head
    assert body == b""
    for path, status in ((b"/nocontent", b"204"), (b"/notmodified", b"304")):
        data, _ = await raw_exchange(proxy.port, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 " + status)
        assert body == b""
        assert b"Transfer-Encoding" not in head


async def test_hop_by_hop_and_connection_named_headers_removed_both_ways(
        start_upstream: UpstreamFactory, start_proxy: ProxyFactory) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.json_response({"headers": [[k, v] for k, v in request.headers.items()]})
        response.headers["Connection"] = "keep-alive, X-Internal-Hop"
        response.headers["X-Internal-Hop"] = "secret"
        response.headers["Keep-Alive"] = "timeout=5"
        response.headers["Proxy-Authenticate"] = "Basic"
        return response

    upstream = await start_upstream(handler)
    proxy = await start_proxy(proxy_yaml(upstream.url))
    request = (b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close, X-Hop-Me\r\nX-Hop-Me: 1\r\n"
               b"Keep-Alive: 300\r\nTE: trailers\r\nProxy-Authorization: Basic Zm9vOmJhcg==\r\n"
               b"Upgrade: h2c\r\nX-Keep-Me: yes\r\n\r\n")
    data, _ = await raw_exchange(proxy.port, request)
    head, _, body = data.partition(b"\r\n\r\n")
    import json

    sent = {name.lower() for name, _ in json.loads(body)["headers"]}
    assert "x-keep-me" in sent
    for name in ("x-hop-me", "keep-alive", "te", "proxy-authorization", "upgrade"):
        assert name not in sent, name
    lowered = head.lower()
    for name in (b"x-internal-hop", b"keep-alive:", b"proxy-authenticate"):
        assert name not in lowered, name


async def test_forwarded_headers_from_untrusted_client_are_replaced(
        start_upstream: UpstreamFactory, start_proxy: ProxyFactory, client: aiohttp.ClientSession) -> None:
    upstream = await start_upstream(echo)
    proxy = await start_proxy(proxy_yaml(upstream.url))
    spoofed = {"X-Forwarded-For": "6.6.6.6", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil.example",
               "X-Real-IP": "6.6.6.6", "Forwarded": "for=6.6.6.6"}
    async with client.get(f"{proxy.url}/", headers=spoofed) as response:
        data = await response.json()
    assert header(data, "x-forwarded-for") == ["127.0.0.1"]
    assert header(data, "x-forwarded-proto") == ["http"]
    assert header(data, "x-forwarded-host") == [f"127.0.0.1:{proxy.port}"]
    assert "x-real-ip" not in header_names(data)
    assert "forwarded" not in header_names(data)


async def test_forwarded_headers_from_trusted_proxy_are_extended(
        start_upstream: UpstreamFactory, start_proxy: ProxyFactory, client: aiohttp.ClientSession) -> None:
    upstream = await start_upstream(echo)
    proxy = await start_proxy(proxy_yaml(upstream.url, server="  trusted_proxies: [127.0.0.0/8]"))
    async with client.get(f"{proxy.url}/", headers={"X-Forwarded-For": "203.0.113.9",
                                                    "X-Forwarded-Proto": "https",
                                                    "X-Forwarded-Host": "wiki.example"}) as response:
        data = await response.json()
    assert header(data, "x-forwarded-for") == ["203.0.113.9, 127.0.0.1"]
    assert header(data, "x-forwarded-proto") == ["https"]
    assert header(data, "x-forwarded-host") == ["wiki.example"]


async def test_the_host_the_request_arrived_with_goes_upstream_unless_preserve_host_is_off(
        start_upstream: UpstreamFactory, start_proxy: ProxyFactory, client: aiohttp.ClientSession) -> None:
    upstream = await start_upstream(echo)
    proxy = await start_proxy(proxy_yaml(upstream.url, extra_routes=f"""
  - name: vhost
    path: /vhost
    upstream: {upstream.url}
    preserve_host: false
    allow: [{{public: true}}]
"""))
    async with client.get(f"{proxy.url}/x") as response:  # the default: apps' CSRF and Origin checks see their host
        seen = await response.json()
        assert header(seen, "host") == [f"127.0.0.1:{proxy.port}"]
        assert header(seen, "x-forwarded-host") == [f"127.0.0.1:{proxy.port}"]
    async with client.get(f"{proxy.url}/vhost") as response:
        assert header(await response.json(), "host") == [f"127.0.0.1:{upstream.port}"]


async def test_client_does_not_get_automatic_headers_or_decompression(
        start_upstream: UpstreamFactory, start_proxy: ProxyFactory) -> None:
    import gzip

    compressed = gzip.compress(b"hello " * 100)

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(body=compressed, headers={"Content-Encoding": "gzip", "Location": "/elsewhere",
                                                      "X-Seen-UA": request.headers.get("User-Agent", "-")},
                            status=302)

    upstream = await start_upstream(handler)
    proxy = await start_proxy(proxy_yaml(upstream.url))
    data, _ = await raw_exchange(proxy.port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 302")  # redirects are the client's business
    assert b"Location: /elsewhere" in head
    assert b"X-Seen-UA: -" in head  # no User-Agent invented by the proxy
    assert body == compressed  # bytes untouched, still gzip


async def test_expect_continue_is_answered_only_after_authorization(
        start_upstream: UpstreamFactory, start_proxy: ProxyFactory) -> None:
    upstream = await start_upstream(echo)
    proxy = await start_proxy(proxy_yaml(upstream.url, extra_routes=f"""
  - name: closed
    path: /closed
    upstream: {upstream.url}
"""))
    headers = b"Host: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
    # Allowed: the proxy says 100 Continue, then the body flows to the upstream.
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"POST /open HTTP/1.1\r\n" + headers)
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert interim.startswith(b"HTTP/1.1 100 Continue")
    writer.write(b"hello")
    final = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert final.startswith(b"HTTP/1.1 200")
    writer.close()
    # Denied: a 403 straight away, never a 100 Continue inviting the upload.
    data, _ = await raw_exchange(proxy.port, b"POST /closed HTTP/1.1\r\n" + headers, read_timeout=2)
    assert data.startswith(b"HTTP/1.1 403")
    assert b"100 Continue" not in data
    assert all(r.path != "/closed" for r in upstream.requests)


async def test_unknown_host_gets_404_never_the_first_route(start_upstream: UpstreamFactory,
                                                           start_proxy: ProxyFactory,
                                                           client: aiohttp.ClientSession) -> None:
    upstream = await start_upstream(echo)
    port_yaml = proxy_yaml(upstream.url).replace("  - name: app\n", "  - name: app\n    host: wiki.example\n")
    proxy = await start_proxy(port_yaml)
    async with client.get(f"{proxy.url}/", headers={"Host": "other.example"}) as response:
        assert response.status == 404
        assert "No application is published" in await response.text()
    async with client.get(f"{proxy.url}/", headers={"Host": "WIKI.Example.:8443"}) as response:
        assert response.status == 200
    assert len(upstream.requests) == 1


async def test_route_without_allow_rule_is_denied_by_default(start_upstream: UpstreamFactory,
                                                             start_proxy: ProxyFactory,
                                                             client: aiohttp.ClientSession) -> None:
    upstream = await start_upstream(echo)
    proxy = await start_proxy(proxy_yaml(upstream.url, allow="[]"))
    async with client.get(f"{proxy.url}/", headers={"Accept": "application/json"}) as response:
        assert response.status == 403
        data = await response.json()
    assert data["error"] == "access-denied"
    assert data["request_id"] == response.headers["X-Request-Id"]
    assert upstream.requests == []


async def test_proxy_paths_are_never_forwarded(start_upstream: UpstreamFactory, start_proxy: ProxyFactory,
                                               client: aiohttp.ClientSession) -> None:
    upstream = await start_upstream(echo)
    proxy = await start_proxy(proxy_yaml(upstream.url))
    for path in ("/.ztproxy/anything", "/.ztproxy", "/.well-known/ztproxy/x", "/%2eztproxy/x"):
        async with client.get(f"{proxy.url}{path}") as response:
            assert response.status == 404, path
    assert upstream.requests == []


async def test_request_body_limit(start_upstream: UpstreamFactory, start_proxy: ProxyFactory,
                                  client: aiohttp.ClientSession) -> None:
    upstream = await start_upstream(echo)
    proxy = await start_proxy(proxy_yaml(upstream.url, server="  limits: {max_request_body: 1KiB}"))
    async with client.post(f"{proxy.url}/small", data=b"x" * 1024) as response:
        assert response.status == 200
    async with client.post(f"{proxy.url}/big", data=b"x" * 1025, headers={"Accept": "application/json"}) as response:
        assert response.status == 413
        assert (await response.json())["error"] == "payload-too-large"
    assert [r.path for r in upstream.requests] == ["/small"]

    async def chunks():  # type: ignore[no-untyped-def]
        for _ in range(4):
            yield b"y" * 512

    # Without a Content-Length the limit is enforced while streaming: the upload to the
    # upstream is cut off, so the upstream never gets a complete oversized body.
    async with client.post(f"{proxy.url}/chunked", data=chunks(), headers={"Accept": "application/json"}) as response:
        assert response.status == 413
        assert (await response.json())["error"] == "payload-too-large"
    bodies = [r for r in upstream.requests if r.path == "/chunked"]
    assert all(r.content.total_bytes <= 1024 for r in bodies)

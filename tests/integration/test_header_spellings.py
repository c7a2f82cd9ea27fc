"""Client headers spelled to pass for the proxy's own, on the wire, over HTTP and WebSocket upgrades.

Each request carries many generated spellings (case, and every separator a header name may
hold in place of '-') of the names the proxy owns or relies on, each with a value of its own;
the upstream must see none of those values, whichever header it looks in.
"""

from __future__ import annotations

import base64
import json
import os
import random

import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.conftest import Proxy, ProxyFactory, Upstream, UpstreamFactory, proxy_yaml, raw_exchange

pytestmark = pytest.mark.integration

SEPARATORS = "-_.!#$%&'*+^`|~"
PROTECTED = ("X-Ztproxy-User", "X-Ztproxy-Email", "X-Ztproxy-Groups", "X-Ztproxy-Jwt-Assertion",
             "X-Employee-Id", "X-Device-Posture", "Content-Length", "Transfer-Encoding", "Host", "Connection",
             "Upgrade", "TE", "Trailer", "Keep-Alive", "Proxy-Authorization", "Forwarded", "X-Forwarded-For",
             "X-Forwarded-Proto", "X-Forwarded-Host", "X-Forwarded-Port", "X-Real-IP")
EXACT_OWNED = ("X-Ztproxy-User", "X-Employee-Id", "X-Device-Posture")


def spellings(rng: random.Random, count: int) -> list[str]:
    """``count`` other spellings of protected names: random case, each '-' any separator but '-' once at least."""
    found: list[str] = []
    while len(found) < count:
        name = rng.choice(PROTECTED)
        spelled = "".join(rng.choice(SEPARATORS) if c == "-" else rng.choice((c.lower(), c.upper())) for c in name)
        if "-" in name and spelled.lower() != name.lower():
            found.append(spelled)
    return found


def request_bytes(headers: list[tuple[str, str]], *, websocket: bool) -> bytes:
    lines = ["GET /ws HTTP/1.1" if websocket else "GET /echo HTTP/1.1", "Host: app.test"]
    if websocket:
        key = base64.b64encode(os.urandom(16)).decode()
        lines += ["Upgrade: websocket", "Connection: Upgrade", f"Sec-WebSocket-Key: {key}",
                  "Sec-WebSocket-Version: 13"]
    else:
        lines.append("Connection: close")
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def posture_key_pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


async def start(start_upstream: UpstreamFactory, start_proxy: ProxyFactory,
                separators: str) -> tuple[Upstream, Proxy, list[list[tuple[str, str]]]]:
    seen: list[list[tuple[str, str]]] = []

    async def echo(request: web.Request) -> web.StreamResponse:
        seen.append(list(request.headers.items()))
        return web.json_response({"ok": True})

    async def ws(request: web.Request) -> web.StreamResponse:
        seen.append(list(request.headers.items()))
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        await socket.close()
        return socket

    upstream = await start_upstream(routes=[web.get("/echo", echo), web.get("/ws", ws)])
    pem = posture_key_pem().replace("\n", "\\n")
    server = f"  headers_with_separators: {separators}\n" \
             f'devices:\n  signed: {{header: X-Device-Posture, public_key: "{pem}"}}'
    yaml = proxy_yaml(upstream.url, server=server).replace(
        "    allow: [{public: true}]", "    allow: [{public: true}]\n    claim_headers: {X-Employee-Id: employee_id}")
    return upstream, await start_proxy(yaml), seen


@pytest.mark.parametrize("websocket", [False, True], ids=["http", "websocket"])
@pytest.mark.parametrize("separators", ["drop-protected", "drop-all"])
async def test_no_spelling_of_a_protected_header_reaches_the_upstream(
        start_upstream: UpstreamFactory, start_proxy: ProxyFactory, websocket: bool, separators: str) -> None:
    upstream, proxy, seen = await start(start_upstream, start_proxy, separators)
    rng = random.Random(f"{separators}-{websocket}")
    for round_ in range(8):
        names = spellings(rng, 40) + list(EXACT_OWNED)
        sent = [(name, f"spoof{round_}x{index}") for index, name in enumerate(names)]
        sent.append(("X-Plain-Kept", "plain"))
        data, _ = await raw_exchange(proxy.port, request_bytes(sent, websocket=websocket), read_timeout=2.0)
        assert data.startswith(b"HTTP/1.1 101" if websocket else b"HTTP/1.1 200"), data[:200]
        received = seen[-1]
        leaked = [(name, value) for name, value in received if "spoof" in value]
        assert leaked == [], (leaked, sent)
        assert ("X-Plain-Kept", "plain") in received
    assert len(upstream.requests) == 8


@pytest.mark.parametrize("websocket", [False, True], ids=["http", "websocket"])
async def test_separator_policies_for_other_headers(start_upstream: UpstreamFactory, start_proxy: ProxyFactory,
                                                    websocket: bool) -> None:
    headers = [("X_Tenant_Id", "t1"), ("X.Trace.Tag", "t2"), ("X-Plain", "t3")]
    for separators, expected in (("drop-protected", {"X_Tenant_Id", "X.Trace.Tag", "X-Plain"}),
                                 ("drop-all", {"X-Plain"})):
        upstream, proxy, seen = await start(start_upstream, start_proxy, separators)
        data, _ = await raw_exchange(proxy.port, request_bytes(headers, websocket=websocket), read_timeout=2.0)
        assert data.startswith(b"HTTP/1.1 101" if websocket else b"HTTP/1.1 200"), data[:200]
        assert {name for name, _ in seen[-1]} & {"X_Tenant_Id", "X.Trace.Tag", "X-Plain"} == expected


@pytest.mark.parametrize("websocket", [False, True], ids=["http", "websocket"])
@pytest.mark.parametrize("header", ["X_Tenant_Id", "X.Trace.Tag", "X~Ztproxy~User", "Content!Length"])
async def test_reject_answers_400_and_forwards_nothing(start_upstream: UpstreamFactory, start_proxy: ProxyFactory,
                                                       websocket: bool, header: str) -> None:
    upstream, proxy, _ = await start(start_upstream, start_proxy, "reject")
    data, closed = await raw_exchange(proxy.port, request_bytes([(header, "v")], websocket=websocket))
    assert data.startswith(b"HTTP/1.1 400"), data[:200]
    assert b"is refused" in data
    assert upstream.requests == []
    # The plain request still passes under reject.
    data, _ = await raw_exchange(proxy.port, request_bytes([("X-Plain", "v")], websocket=websocket),
                                 read_timeout=2.0)
    assert data.startswith(b"HTTP/1.1 101" if websocket else b"HTTP/1.1 200"), data[:200]
    assert len(upstream.requests) == 1


async def test_httpoxy_and_forwarding_family_from_an_untrusted_client(start_upstream: UpstreamFactory,
                                                                     start_proxy: ProxyFactory) -> None:
    upstream, proxy, seen = await start(start_upstream, start_proxy, "drop-protected")
    headers = [("Proxy", "http://evil.example:3128"), ("X-Forwarded-Port", "1"), ("X-Forwarded-Prefix", "/evil"),
               ("Forwarded", "for=6.6.6.6"), ("X-Real-IP", "6.6.6.6")]
    data, _ = await raw_exchange(proxy.port, request_bytes(headers, websocket=False))
    assert data.startswith(b"HTTP/1.1 200"), data[:200]
    received = dict(seen[-1])
    assert not {"Proxy", "X-Forwarded-Port", "X-Forwarded-Prefix", "Forwarded", "X-Real-IP"} & set(received)
    assert json.loads(data.partition(b"\r\n\r\n")[2]) == {"ok": True}

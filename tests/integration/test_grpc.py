"""gRPC through the proxy: a real grpcio service and client, over TLS, with service tokens from the real IdP.

The service (grpcio, generic handlers on raw bytes: no generated code) echoes the metadata it
receives; the client calls it through ztproxy's TLS listener (certificates from
``tests.support.posture``) with client-credentials tokens from the demo IdP. Unary,
server-streaming and client-streaming calls pass with the identity; the refusals come back
as gRPC statuses, and the service is never called for them.
"""

from __future__ import annotations

import asyncio
import json
import queue
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import grpc
import jwt
import pytest

from tests.conftest import ProxyFactory, ProxyProcess, free_port
from tests.integration.test_http2 import serve_tls_process
from tests.support.idp import IdpFactory
from tests.support.posture import DevicePki
from ztproxy.demo_idp import DemoIdp, IdpClient, IdpResource, IdpService
from ztproxy.errors import UpstreamTimeout

pytestmark = pytest.mark.integration

ORDERS = "https://orders.corp.example"
BILLING = IdpService("billing", "billing-secret-for-tests-0123456789", ("orders.read",))
REPORTS = IdpService("reports", "reports-secret-for-tests-0123456789", ("orders.read",))


@dataclass
class EchoService:
    """The gRPC service behind the proxy: what each call received, and its answers."""

    calls: list[dict[str, str]] = field(default_factory=list)
    collected: list[bytes] = field(default_factory=list)  # client-streaming calls that got all their messages

    def _seen(self, context: grpc.ServicerContext) -> dict[str, str]:
        metadata = {key: value for key, value in context.invocation_metadata() if isinstance(value, str)}
        self.calls.append(metadata)
        context.set_trailing_metadata((("x-service-trailer", "sent"),))
        return metadata

    def unary(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        return json.dumps({"echo": request.decode(), "metadata": self._seen(context)}).encode()

    def stream(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        self._seen(context)
        for index in range(int(request)):
            yield f"message {index}".encode()

    def collect(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        self._seen(context)
        joined = b"+".join(requests)
        self.collected.append(joined)
        return joined

    def chat(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        self._seen(context)
        for request in requests:  # each answer goes out before the next message is read
            yield request.upper()

    def slow(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self._seen(context)
        while context.is_active():  # until the proxy gives up on it (or the server stops)
            time.sleep(0.05)
        return b"too late"

    def handler(self, name: str = "test.Echo") -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(name, {
            "Unary": grpc.unary_unary_rpc_method_handler(self.unary),
            "Stream": grpc.unary_stream_rpc_method_handler(self.stream),
            "Collect": grpc.stream_unary_rpc_method_handler(self.collect),
            "Chat": grpc.stream_stream_rpc_method_handler(self.chat),
            "Slow": grpc.unary_unary_rpc_method_handler(self.slow),
        })


def proxy_channel(port: int, pki: DevicePki) -> grpc.Channel:
    """A gRPC channel to the proxy's TLS listener, trusting the test CA, for host localhost."""
    credentials = grpc.ssl_channel_credentials(root_certificates=pki.server_ca.cert_file.read_bytes())
    return grpc.secure_channel(f"127.0.0.1:{port}", credentials,
                               options=[("grpc.ssl_target_name_override", "localhost"),
                                        ("grpc.default_authority", "localhost")])


@dataclass
class World:
    idp: DemoIdp
    service: EchoService
    port: int
    pki: DevicePki

    def channel(self) -> grpc.Channel:
        return proxy_channel(self.port, self.pki)

    async def call(self, kind: str, method: str, request: Any, *, token: str | None = None,
                   metadata: tuple[tuple[str, str], ...] = ()) -> tuple[grpc.StatusCode, Any, dict[str, str]]:
        """One call from a thread (grpcio's client blocks); its status, answer and trailers."""
        sent = [*metadata, *((("authorization", f"Bearer {token}"),) if token else ())]

        def blocking() -> tuple[grpc.StatusCode, Any, dict[str, str]]:
            with self.channel() as channel:
                try:
                    if kind == "unary":
                        answer, call = channel.unary_unary(method).with_call(request, metadata=sent, timeout=30)
                        return grpc.StatusCode.OK, answer, dict(call.trailing_metadata() or ())
                    if kind == "stream":
                        responses = channel.unary_stream(method)(request, metadata=sent, timeout=30)
                        answers = list(responses)
                        return grpc.StatusCode.OK, answers, dict(responses.trailing_metadata() or ())
                    if kind == "chat":
                        # Ping-pong: the next message is sent only once the answer to the last one has
                        # come back, which needs both directions to flow at once through the proxy.
                        outgoing: queue.Queue[bytes | None] = queue.Queue()
                        chat = channel.stream_stream(method)(iter(outgoing.get, None), metadata=sent, timeout=30)
                        answers = []
                        for message in request:
                            outgoing.put(message)
                            answers.append(next(chat))
                        outgoing.put(None)
                        answers.extend(chat)
                        return grpc.StatusCode.OK, answers, dict(chat.trailing_metadata() or ())
                    answer, call = channel.stream_unary(method).with_call(iter(request), metadata=sent, timeout=30)
                    return grpc.StatusCode.OK, answer, dict(call.trailing_metadata() or ())
                except grpc.RpcError as error:
                    return error.code(), error.details(), dict(error.trailing_metadata() or ())  # type: ignore[attr-defined]

        return await asyncio.to_thread(blocking)


@pytest.fixture
async def world(start_idp: IdpFactory, start_proxy: ProxyFactory, device_pki: DevicePki,
                monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[World]:
    service = EchoService()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((service.handler(), service.handler("test.EchoTls"),
                                     service.handler("test.EchoSlow")))
    service_port = server.add_insecure_port("127.0.0.1:0")
    # The same service over TLS: the proxy trusts the test CA as it would a system one.
    tls_port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials(
        [(device_pki.server.key_file.read_bytes(), device_pki.server.cert_file.read_bytes())]))
    monkeypatch.setenv("SSL_CERT_FILE", str(device_pki.server_ca.cert_file))
    server.start()
    port = free_port()
    idp = await start_idp(
        clients=[IdpClient(client_id="ztproxy", client_secret="proxy-client-secret-for-tests",
                           redirect_uris=(f"https://localhost:{port}/.ztproxy/callback",))],
        services=[BILLING, REPORTS], resources=[IdpResource(ORDERS, ("orders.read",))])
    await start_proxy(f"""
server:
  listen: 127.0.0.1:{port}
  admin_listen: null
  tls: {device_pki.tls_yaml(client_ca=False)}
  limits: {{max_request_body: 16KiB}}  # under any upstream's first stream window (64 KiB): no wait on it
identity_providers:
  - {{name: demo, issuer: "{idp.issuer}", client_id: ztproxy, client_secret: proxy-client-secret-for-tests}}
sessions:
  cookie_secrets: [0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef]
routes:
  - {{name: echo, path: /test.Echo/, upstream: "http://127.0.0.1:{service_port}", upstream_protocol: grpc,
     audience: "{ORDERS}", allow: [{{clients: [billing]}}]}}
  - {{name: echo-tls, path: /test.EchoTls/, upstream: "https://localhost:{tls_port}",
     upstream_protocol: grpc, audience: "{ORDERS}", allow: [{{clients: [billing]}}]}}
  - {{name: slow, path: /test.EchoSlow/, upstream: "http://127.0.0.1:{service_port}", upstream_protocol: grpc,
     read_timeout: 1s, audience: "{ORDERS}", allow: [{{clients: [billing]}}]}}
  - {{name: down, path: /test.Down/, upstream: "http://127.0.0.1:{free_port()}", upstream_protocol: grpc,
     audience: "{ORDERS}", allow: [{{clients: [billing]}}]}}
""")
    yield World(idp=idp, service=service, port=port, pki=device_pki)
    server.stop(grace=None)


async def test_unary_call_reaches_the_service_with_the_identity(world: World) -> None:
    token = await world.idp.client_credentials(BILLING, ORDERS, ["orders.read"])
    status, answer, trailers = await world.call(
        "unary", "/test.Echo/Unary", b"hello", token=token,
        metadata=(("x-ztproxy-user", "forged"), ("x-ztproxy-jwt-assertion", "forged.jwt.value")))
    assert status == grpc.StatusCode.OK, answer
    body = json.loads(answer)
    seen = body["metadata"]
    assert body["echo"] == "hello"
    assert seen["x-ztproxy-user"] == "billing"  # the proxy's, not the forged one
    claims = jwt.decode(seen["x-ztproxy-jwt-assertion"], options={"verify_signature": False})
    assert claims["sub"] == "billing" and claims["caller"] == "service" and claims["route"] == "echo"
    assert "authorization" in seen  # the token is the service's to check again, as over HTTP/1.1
    assert trailers["x-service-trailer"] == "sent"  # the service's trailers reach the client


async def test_server_client_and_bidirectional_streaming_calls(world: World) -> None:
    token = await world.idp.client_credentials(BILLING, ORDERS, ["orders.read"])
    status, answers, trailers = await world.call("stream", "/test.Echo/Stream", b"5", token=token)
    assert status == grpc.StatusCode.OK, answers
    assert answers == [f"message {index}".encode() for index in range(5)]
    assert trailers["x-service-trailer"] == "sent"
    status, answer, _ = await world.call("collect", "/test.Echo/Collect", [b"a", b"b", b"c"], token=token)
    assert status == grpc.StatusCode.OK and answer == b"a+b+c"
    status, answers, _ = await world.call("chat", "/test.Echo/Chat", [b"one", b"two", b"three"], token=token)
    assert status == grpc.StatusCode.OK and answers == [b"ONE", b"TWO", b"THREE"]
    assert all(call["x-ztproxy-user"] == "billing" for call in world.service.calls)


async def test_refusals_are_grpc_statuses(world: World) -> None:
    reports = await world.idp.client_credentials(REPORTS, ORDERS, ["orders.read"])
    billing = await world.idp.client_credentials(BILLING, ORDERS, ["orders.read"])
    no_credential = await world.call("unary", "/test.Echo/Unary", b"x")
    bad_token = await world.call("unary", "/test.Echo/Unary", b"x", token="not-a-token")
    denied = await world.call("unary", "/test.Echo/Unary", b"x", token=reports)
    streaming_denied = await world.call("stream", "/test.Echo/Stream", b"3", token=reports)
    down = await world.call("unary", "/test.Down/Unary", b"x", token=billing)
    assert no_credential[0] == grpc.StatusCode.UNAUTHENTICATED
    assert bad_token[0] == grpc.StatusCode.UNAUTHENTICATED
    assert denied[0] == grpc.StatusCode.PERMISSION_DENIED and "<" not in denied[1]  # words, not a page
    assert streaming_denied[0] == grpc.StatusCode.PERMISSION_DENIED
    assert down[0] == grpc.StatusCode.UNAVAILABLE
    assert world.service.calls == []  # none of them reached the service


async def test_an_upstream_past_read_timeout_is_deadline_exceeded(world: World) -> None:
    token = await world.idp.client_credentials(BILLING, ORDERS, ["orders.read"])
    status, details, _ = await world.call("unary", "/test.EchoSlow/Slow", b"x", token=token)
    assert status == grpc.StatusCode.DEADLINE_EXCEEDED, details
    assert details == UpstreamTimeout.title  # the proxy's words: the client's own deadline (30 s) was far off


async def test_a_stream_past_max_request_body_is_resource_exhausted(world: World) -> None:
    token = await world.idp.client_credentials(BILLING, ORDERS, ["orders.read"])
    status, details, _ = await world.call("collect", "/test.Echo/Collect", [b"m" * 16384] * 8, token=token)
    assert status == grpc.StatusCode.RESOURCE_EXHAUSTED, details
    assert world.service.collected == []  # the service saw the call cut off, never complete


async def test_a_tls_upstream_is_reached_over_h2_by_alpn(world: World) -> None:
    token = await world.idp.client_credentials(BILLING, ORDERS, ["orders.read"])
    status, answers, trailers = await world.call("stream", "/test.EchoTls/Stream", b"2", token=token)
    assert status == grpc.StatusCode.OK, answers
    assert answers == [b"message 0", b"message 1"] and trailers["x-service-trailer"] == "sent"
    assert world.service.calls[-1]["x-ztproxy-user"] == "billing"


async def test_a_grpc_route_over_http1_gets_a_grpc_status(world: World) -> None:
    """gRPC needs HTTP/2 (trailers); an HTTP/1.1 caller learns why, as a gRPC status, never a page."""
    token = await world.idp.client_credentials(BILLING, ORDERS, ["orders.read"])
    async with aiohttp.ClientSession() as client:
        async with client.post(f"https://127.0.0.1:{world.port}/test.Echo/Unary", data=b"\0\0\0\0\0",
                               ssl=world.pki.client_context(),
                               headers={"Host": "localhost", "Content-Type": "application/grpc",
                                        "Authorization": f"Bearer {token}"}) as response:
            assert response.status == 200
            assert response.headers["Content-Type"] == "application/grpc"
            assert response.headers["grpc-status"] == "13"
            assert "HTTP/2" in response.headers["grpc-message"]
            assert await response.read() == b""
    assert world.service.calls == []


def test_ztproxy_run_forwards_grpc(proxy_process: Callable[..., ProxyProcess], device_pki: DevicePki) -> None:
    """The real server (uvloop, worker processes) on both legs of HTTP/2, to a public gRPC route."""
    service = EchoService()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((service.handler(),))
    service_port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        route = f'{{name: echo, upstream: "http://127.0.0.1:{service_port}", upstream_protocol: grpc, ' \
                'allow: [{public: true}]}'
        port = serve_tls_process(proxy_process, device_pki, route)
        with proxy_channel(port, device_pki) as channel:
            answers = list(channel.unary_stream("/test.Echo/Stream")(b"3", timeout=30))
    finally:
        server.stop(grace=None)
    assert answers == [b"message 0", b"message 1", b"message 2"]

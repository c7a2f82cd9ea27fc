"""Telemetry end to end: spans read back from the SDK and from a real OTLP receiver, and real scrapes of /metrics."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from tests.conftest import ProxyFactory, UpstreamFactory, free_port, proxy_yaml
from tests.integration.login_env import start_world
from tests.integration.test_process import StartProcess, process_yaml
from tests.support.idp import ALICE_PASSWORD, IdpFactory
from tests.support.user_agent import UserAgent
from tests.unit.test_metrics import Samples, changes, samples, value
from tests.unit.test_tracing import memory_tracing

pytestmark = pytest.mark.integration

CLIENT_TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
CLIENT_TRACEPARENT = f"00-{CLIENT_TRACE_ID}-b7ad6b7169203331-01"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    with memory_tracing() as exporter:
        yield exporter


def by_kind(exporter: InMemorySpanExporter) -> tuple[list[ReadableSpan], list[ReadableSpan]]:
    finished = exporter.get_finished_spans()
    return ([s for s in finished if s.kind is SpanKind.SERVER], [s for s in finished if s.kind is SpanKind.CLIENT])


def traceparent_of(span: ReadableSpan) -> str:
    context = span.get_span_context()
    assert context is not None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


async def test_a_request_has_a_server_span_a_client_span_and_the_upstream_continues_it(
        spans: InMemorySpanExporter, start_upstream: UpstreamFactory, start_proxy: ProxyFactory) -> None:
    upstream = await start_upstream()
    proxy = await start_proxy(proxy_yaml(upstream.url))
    async with aiohttp.ClientSession() as client:
        async with client.get(f"{proxy.url}/page?x=1", headers={"User-Agent": "probe/1"}) as response:
            assert response.status == 200
            request_id = response.headers["X-Request-Id"]
    [server], [upstream_call] = by_kind(spans)
    assert server.name == "GET app"
    attributes = dict(server.attributes or {})
    assert attributes["ztproxy.route"] == "app" and attributes["ztproxy.decision"] == "allow"
    assert attributes["http.response.status_code"] == 200 and attributes["url.path"] == "/page"
    assert attributes["ztproxy.request_id"] == request_id and attributes["user_agent.original"] == "probe/1"
    assert attributes["client.address"] == "127.0.0.1"
    assert server.parent is None  # a direct client: a new trace
    # The upstream call is a child of the request's span, and the upstream got its context.
    assert upstream_call.parent is not None and server.context is not None
    assert upstream_call.parent.span_id == server.context.span_id
    assert (upstream_call.attributes or {})["http.response.status_code"] == 200
    assert upstream.requests[-1].headers.getall("traceparent") == [traceparent_of(upstream_call)]


@pytest.mark.parametrize("trusted", [True, False])
async def test_an_incoming_traceparent_is_continued_only_from_a_trusted_proxy(
        trusted: bool, spans: InMemorySpanExporter, start_upstream: UpstreamFactory,
        start_proxy: ProxyFactory) -> None:
    upstream = await start_upstream()
    server_yaml = "  trusted_proxies: [127.0.0.1/32]" if trusted else ""
    proxy = await start_proxy(proxy_yaml(upstream.url, server=server_yaml))
    async with aiohttp.ClientSession() as client:
        async with client.get(f"{proxy.url}/", headers={"traceparent": CLIENT_TRACEPARENT,
                                                         "tracestate": "vendor=abc"}) as response:
            assert response.status == 200
    [server], [upstream_call] = by_kind(spans)
    assert server.context is not None
    received = upstream.requests[-1].headers
    if trusted:
        assert f"{server.context.trace_id:032x}" == CLIENT_TRACE_ID
        assert server.parent is not None and f"{server.parent.span_id:016x}" == "b7ad6b7169203331"
        assert received.get("tracestate") == "vendor=abc"  # the proxy in front keeps its vendor state
    else:
        # An untrusted client neither picks the trace id nor hands its state upstream.
        assert f"{server.context.trace_id:032x}" != CLIENT_TRACE_ID and server.parent is None
        assert "tracestate" not in received
    assert received.getall("traceparent") == [traceparent_of(upstream_call)]


async def test_a_denied_request_span_names_the_decision_and_reasons(
        spans: InMemorySpanExporter, start_upstream: UpstreamFactory, start_proxy: ProxyFactory) -> None:
    upstream = await start_upstream()
    proxy = await start_proxy(proxy_yaml(upstream.url, allow="[{source_cidrs: [192.0.2.0/24]}]"))
    async with aiohttp.ClientSession() as client:
        async with client.get(f"{proxy.url}/secret") as response:
            assert response.status == 403
    [server], upstream_calls = by_kind(spans)
    assert upstream_calls == [] and upstream.requests == []
    attributes = dict(server.attributes or {})
    assert attributes["ztproxy.decision"] == "deny"
    assert list(attributes["ztproxy.reasons"]) == ["source-not-allowed"]  # type: ignore[arg-type]
    assert attributes["http.response.status_code"] == 403
    assert server.status.status_code is StatusCode.UNSET  # a refusal is not a server error


async def test_an_unreachable_upstream_fails_both_spans(
        spans: InMemorySpanExporter, start_proxy: ProxyFactory) -> None:
    proxy = await start_proxy(proxy_yaml(f"http://127.0.0.1:{free_port()}"))
    async with aiohttp.ClientSession() as client:
        async with client.get(f"{proxy.url}/") as response:
            assert response.status == 502
    [server], [upstream_call] = by_kind(spans)
    assert upstream_call.status.status_code is StatusCode.ERROR
    assert (upstream_call.attributes or {})["error.type"] == "upstream-unavailable"
    assert server.status.status_code is StatusCode.ERROR
    assert (server.attributes or {})["error.type"] == "502"


async def test_a_signed_in_request_span_names_its_subject_and_session(
        spans: InMemorySpanExporter, start_idp: IdpFactory, start_proxy: ProxyFactory,
        start_upstream: UpstreamFactory) -> None:
    world = await start_world(start_idp, start_proxy, start_upstream)
    async with UserAgent() as agent:
        final = await world.login(agent, "/app/page", "alice", ALICE_PASSWORD)
        assert final.status == 200
        served = [s for s in by_kind(spans)[0] if (s.attributes or {}).get("url.path") == "/app/page"]
        attributes = dict(served[-1].attributes or {})
        assert attributes["enduser.id"] and attributes["ztproxy.decision"] == "allow"
        # The session's public handle (as in the logs), never what the cookie carries.
        session = attributes["ztproxy.session"]
        assert isinstance(session, str) and session
        assert all(session not in cookie.value for cookie in agent.cookie_jar)


# --- real processes ------------------------------------------------------------------------------

async def scrape(client: aiohttp.ClientSession, admin_url: str) -> tuple[str, Samples]:
    async with client.get(f"{admin_url}/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = await response.text()
    return text, samples(text)


async def test_a_scrape_of_a_running_proxy_shows_its_requests(start_upstream: UpstreamFactory,
                                                               proxy_process: StartProcess) -> None:
    upstream = await start_upstream()
    yaml_text = f"""
server: {{listen: 127.0.0.1:{free_port()}, admin_listen: 127.0.0.1:{free_port()}}}
routes:
  - {{name: open, path: /open, upstream: "{upstream.url}", allow: [{{public: true}}]}}
  - {{name: closed, path: /closed, upstream: "{upstream.url}", allow: [{{source_cidrs: [192.0.2.0/24]}}]}}
"""
    proxy = proxy_process(yaml_text)
    async with aiohttp.ClientSession() as client:
        _, before = await scrape(client, proxy.admin_url)
        for _ in range(3):
            async with client.get(f"{proxy.url}/open/a") as response:
                assert response.status == 200
        async with client.get(f"{proxy.url}/closed/b") as response:
            assert response.status == 403
        async with client.get(f"{proxy.url}/elsewhere") as response:
            assert response.status == 404
        # Refused by the HTTP parser, before the pipeline: counted all the same.
        host, port = proxy.url.removeprefix("http://").rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
        status_line = await asyncio.wait_for(reader.readline(), 10)
        writer.close()
        await writer.wait_closed()
        assert status_line.split()[1] == b"400"
        text, after = await scrape(client, proxy.admin_url)
    delta = changes(before, after)
    assert delta("ztproxy_requests_total", route="open", status="200", decision="allow", caller="anonymous") == 3
    assert delta("ztproxy_requests_total", route="closed", status="403", decision="deny", caller="anonymous") == 1
    assert delta("ztproxy_requests_total", route="-", status="404", decision="-", caller="anonymous") == 1
    assert delta("ztproxy_requests_total", route="-", status="400", decision="-", caller="anonymous") == 1
    assert delta("ztproxy_denials_total", route="closed", reason="source-not-allowed", caller="anonymous") == 1
    assert delta("ztproxy_request_duration_seconds_count", route="open", decision="allow", caller="anonymous") == 3
    assert delta("ztproxy_upstream_duration_seconds_count", route="open") == 3
    assert delta("ztproxy_upstream_duration_seconds_count", route="closed") == 0
    assert 'worker="' not in text  # one process: nothing to tell apart


async def test_a_scrape_merges_every_worker(start_upstream: UpstreamFactory, proxy_process: StartProcess) -> None:
    upstream = await start_upstream()
    proxy = proxy_process(process_yaml(upstream.url), "--workers", "2")
    requests = 40
    async with aiohttp.ClientSession() as client:
        _, before = await scrape(client, proxy.admin_url)
        for _ in range(requests):
            # A new connection each time, so that the kernel spreads them over the workers.
            async with client.get(f"{proxy.url}/x", headers={"Connection": "close"}) as response:
                assert response.status == 200
        text, after = await scrape(client, proxy.admin_url)
    assert changes(before, after)("ztproxy_requests_total", route="app", status="200") == requests
    for worker in ("supervisor", "0", "1"):
        assert after[("ztproxy_worker_up", frozenset({("worker", worker)}))] == 1
        assert value(after, "process_resident_memory_bytes", worker=worker) > 0
    # One HELP and one TYPE line per family, however many workers report it.
    type_lines = [line for line in text.splitlines() if line.startswith("# TYPE ")]
    assert len(type_lines) == len(set(type_lines)) and "# TYPE ztproxy_requests_total counter" in type_lines


class OtlpReceiver:
    """A real OTLP/HTTP trace endpoint: decodes what the proxy's exporter posts to /v1/traces."""

    def __init__(self) -> None:
        self.spans: list[tuple[dict[str, Any], Any]] = []  # (resource attributes, span)

    async def receive(self, request: web.Request) -> web.Response:
        assert request.headers["Content-Type"] == "application/x-protobuf"
        export = ExportTraceServiceRequest.FromString(await request.read())
        for resource_spans in export.resource_spans:
            resource = {kv.key: kv.value.string_value for kv in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                self.spans.extend((resource, span) for span in scope_spans.spans)
        return web.Response(body=b"", content_type="application/x-protobuf")


async def test_traces_go_to_the_otlp_endpoint_of_the_environment_and_logs_carry_their_ids(
        start_upstream: UpstreamFactory, proxy_process: StartProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    receiver = OtlpReceiver()
    otlp_app = web.Application()
    otlp_app.router.add_post("/v1/traces", receiver.receive)
    runner = web.AppRunner(otlp_app, access_log=None)
    await runner.setup()
    otlp_port = free_port()
    await web.TCPSite(runner, "127.0.0.1", otlp_port).start()
    try:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{otlp_port}")
        monkeypatch.setenv("OTEL_SERVICE_NAME", "ztproxy-under-test")
        monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")  # milliseconds: export soon after the request
        upstream = await start_upstream()
        yaml_text = process_yaml(upstream.url, allow="[{source_cidrs: [127.0.0.0/8]}]",
                                 extra_server="logging: {flush_interval: 0s}")
        proxy = proxy_process(yaml_text, "--workers", "2")
        async with aiohttp.ClientSession() as client:
            async with client.get(f"{proxy.url}/traced") as response:
                assert response.status == 200
                request_id = response.headers["X-Request-Id"]
        deadline = time.monotonic() + 15
        while len(receiver.spans) < 2:
            assert time.monotonic() < deadline, f"spans received: {len(receiver.spans)}"
            await asyncio.sleep(0.05)
    finally:
        await runner.cleanup()
    server = next(span for resource, span in receiver.spans if span.name == "GET app")
    client_span = next(span for resource, span in receiver.spans if span.parent_span_id == server.span_id)
    resource = next(resource for resource, span in receiver.spans if span is server)
    assert resource["service.name"] == "ztproxy-under-test"
    trace_id, span_id = server.trace_id.hex(), server.span_id.hex()
    assert upstream.requests[-1].headers["traceparent"].startswith(f"00-{trace_id}-{client_span.span_id.hex()}-")
    # The access and decision events of that request name the same trace and span.
    deadline = time.monotonic() + 5
    while True:
        events = [json.loads(line) for line in proxy.log_lines() if line.startswith("{")]
        mine = {e["event"]: e for e in events if e.get("request_id") == request_id}
        if {"access", "decision"} <= mine.keys() or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    assert mine["access"]["trace_id"] == trace_id and mine["access"]["span_id"] == span_id
    assert mine["decision"]["trace_id"] == trace_id and mine["decision"]["span_id"] == span_id
    assert any(e.get("event") == "tracing_started" for e in events)

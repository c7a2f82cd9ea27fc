"""Tracing: when the environment turns it on, the upstream span and its W3C context, and log correlation."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
from multidict import CIMultiDict
from opentelemetry import trace
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from structlog.testing import capture_logs
from yarl import URL

from ztproxy import tracing
from ztproxy.errors import UpstreamTimeout

CLIENT_TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@contextlib.contextmanager
def memory_tracing() -> Iterator[InMemorySpanExporter]:
    """Tracing on in this process, spans kept in memory: start it before the proxy's app is built."""
    exporter = InMemorySpanExporter()
    provider = tracing.start(SimpleSpanProcessor(exporter))
    try:
        yield exporter
    finally:
        tracing.stop(provider)


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    with memory_tracing() as exporter:
        yield exporter


@pytest.mark.parametrize(("env", "expected"), [
    ({}, False),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, True),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, True),
    ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
    ({"OTEL_TRACES_EXPORTER": "console"}, True),
    ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, False),
    ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, False),
    ({"OTEL_SDK_DISABLED": "false", "OTEL_TRACES_EXPORTER": "otlp"}, True),
])
def test_tracing_is_off_unless_the_environment_asks(env: dict[str, str], expected: bool) -> None:
    assert tracing.wanted(env) is expected


def test_exporters_from_the_environment() -> None:
    processors = tracing.processors_from_env({"OTEL_TRACES_EXPORTER": "otlp,console"})
    try:
        assert len(processors) == 2 and all(isinstance(p, BatchSpanProcessor) for p in processors)
    finally:
        for processor in processors:
            processor.shutdown()


@pytest.mark.parametrize(("env", "message"), [
    ({"OTEL_TRACES_EXPORTER": "zipkin"}, "unsupported exporter zipkin"),
    ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "'grpc' is not supported"),
    ({"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json"}, "'http/json' is not supported"),
])
def test_unsupported_exporters_are_refused_with_the_reason(env: dict[str, str], message: str) -> None:
    with pytest.raises(tracing.TracingConfigError, match=message):
        tracing.processors_from_env(env)


async def test_a_misconfigured_environment_logs_why_and_serves_without_traces() -> None:
    with capture_logs() as events:
        async with tracing.tracing_from_env({"OTEL_TRACES_EXPORTER": "jaeger"}):
            assert tracing.TRACER is None
    [event] = [e for e in events if e["event"] == "tracing_not_started"]
    assert "jaeger" in event["reason"] and event["log_level"] == "error"


async def test_tracing_lasts_for_the_block() -> None:
    assert tracing.TRACER is None
    async with tracing.tracing_from_env({"OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "edge-7"}):
        assert tracing.TRACER is not None
    assert tracing.TRACER is None


def test_the_upstream_gets_the_client_span_context_not_the_clients(spans: InMemorySpanExporter) -> None:
    headers = CIMultiDict({"traceparent": CLIENT_TRACEPARENT, "tracestate": "evil=1", "Accept": "*/*"})
    span = tracing.start_client_span("GET", URL("http://10.0.0.5:8080/wiki/page?token=secret"), headers)
    tracing.end_client_span(span, 200)
    [finished] = spans.get_finished_spans()
    context = finished.get_span_context()
    assert context is not None
    expected = f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
    assert headers.getall("traceparent") == [expected]
    assert "tracestate" not in headers and headers["Accept"] == "*/*"
    assert finished.kind is SpanKind.CLIENT and finished.name == "GET"
    attributes = dict(finished.attributes or {})
    assert attributes["http.response.status_code"] == 200
    assert attributes["url.full"] == "http://10.0.0.5:8080/wiki/page"  # no query: it may carry secrets
    assert attributes["server.address"] == "10.0.0.5" and attributes["server.port"] == 8080
    assert finished.status.status_code is StatusCode.UNSET


def test_a_failed_upstream_call_marks_its_span(spans: InMemorySpanExporter) -> None:
    failing = tracing.start_client_span("POST", URL("http://127.0.0.1:9/"), CIMultiDict())
    with pytest.raises(UpstreamTimeout):
        try:
            raise UpstreamTimeout()
        finally:
            tracing.end_client_span(failing, 0)
    refused = tracing.start_client_span("GET", URL("http://127.0.0.1:9/"), CIMultiDict())
    tracing.end_client_span(refused, 503)
    timed_out, answered = spans.get_finished_spans()
    assert timed_out.status.status_code is StatusCode.ERROR
    assert (timed_out.attributes or {})["error.type"] == "upstream-timeout"
    assert answered.status.status_code is StatusCode.ERROR
    assert (answered.attributes or {})["error.type"] == "503"


def test_log_events_carry_the_current_span_ids(spans: InMemorySpanExporter) -> None:
    assert tracing.TRACER is not None
    with tracing.TRACER.start_as_current_span("work") as span:
        event = tracing.add_trace_ids(None, "info", {"event": "something"})
    context = span.get_span_context()
    assert event["trace_id"] == f"{context.trace_id:032x}" and event["span_id"] == f"{context.span_id:016x}"
    assert "trace_id" not in tracing.add_trace_ids(None, "info", {"event": "outside"})


def test_no_ids_while_tracing_is_off() -> None:
    assert tracing.TRACER is None
    with trace.NoOpTracer().start_as_current_span("elsewhere"):
        assert "trace_id" not in tracing.add_trace_ids(None, "info", {"event": "x"})

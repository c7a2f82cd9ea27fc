"""Tracing: an OpenTelemetry server span per request, a client span per upstream call.

Off unless the standard environment asks for it (``tracing_from_env``): with
``OTEL_TRACES_EXPORTER`` set to ``otlp`` or ``console``, or with an OTLP endpoint
(``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) and no
``OTEL_TRACES_EXPORTER=none``; ``OTEL_SDK_DISABLED=true`` wins over both. Off, ``TRACER``
is None and no request does any span work. The SDK reads the rest of ``OTEL_*`` itself:
sampler, resource and service name, batch processor, OTLP endpoint, headers, timeout,
compression and certificates. Spans go out as OTLP over HTTP (protobuf).

Trace context is W3C ``traceparent``/``tracestate``. An incoming one is continued only
from a peer in ``server.trusted_proxies``: anyone else could pick trace ids (and collide
with or poison real traces) and force every request to be sampled. The upstream always
gets the proxy's own context in place of whatever the client sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web
from multidict import CIMultiDict
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from yarl import URL

from ztproxy import __version__
from ztproxy.headers import forwarded_for
from ztproxy.state import INTAKE, RECORD, RequestRecord

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider

_log = structlog.get_logger("ztproxy.tracing")

TRACER: trace.Tracer | None = None  # set while tracing is on in this process
SERVER_SPAN = web.RequestKey("server_span", trace.Span)
_PROPAGATOR = TraceContextTextMapPropagator()  # W3C Trace Context only: baggage from clients is not trusted
_TRACE_HEADERS = ("traceparent", "tracestate")
_EXPORTERS = ("otlp", "console")
_OTLP_PROTOCOL = "http/protobuf"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class TracingConfigError(ValueError):
    """The OTEL_* environment asks for something this build cannot do."""


# --- turning it on and off ---------------------------------------------------------------------

def wanted(env: Mapping[str, str]) -> bool:
    """Whether the environment asks for traces (see the module docstring)."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter:
        return exporter != "none"
    return bool(env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT"))


def processors_from_env(env: Mapping[str, str]) -> list[SpanProcessor]:
    """A batching processor to each exporter ``OTEL_TRACES_EXPORTER`` names (default ``otlp``)."""
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

    names = [name.strip().lower() for name in env.get("OTEL_TRACES_EXPORTER", "otlp").split(",") if name.strip()]
    unknown = [name for name in names if name not in _EXPORTERS]
    if unknown:
        raise TracingConfigError(f"OTEL_TRACES_EXPORTER: unsupported exporter {', '.join(unknown)} "
                                 f"(supported: {', '.join(_EXPORTERS)}, none)")
    exporters: list[SpanExporter] = []
    if "otlp" in names:
        protocol = (env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                    or _OTLP_PROTOCOL).strip()
        if protocol != _OTLP_PROTOCOL:
            raise TracingConfigError(f"OTEL_EXPORTER_OTLP_PROTOCOL: {protocol!r} is not supported "
                                     f"(only {_OTLP_PROTOCOL})")
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        exporters.append(OTLPSpanExporter())
    if "console" in names:
        exporters.append(ConsoleSpanExporter(out=sys.stderr))  # stdout carries the JSON log lines
    return [BatchSpanProcessor(exporter) for exporter in exporters]


def start(*processors: SpanProcessor) -> TracerProvider:
    """Turn tracing on in this process; build the app after this (its pipeline is chosen then)."""
    from opentelemetry.sdk.resources import OTELResourceDetector, Resource
    from opentelemetry.sdk.trace import TracerProvider

    global TRACER
    # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES override these defaults.
    resource = Resource.create({"service.name": "ztproxy", "service.version": __version__}).merge(
        OTELResourceDetector().detect())
    provider = TracerProvider(resource=resource)  # sampler and limits from OTEL_TRACES_SAMPLER & co.
    for processor in processors:
        provider.add_span_processor(processor)
    TRACER = provider.get_tracer("ztproxy", __version__)
    return provider


def stop(provider: TracerProvider) -> None:
    """Turn tracing off and send the spans still queued."""
    global TRACER
    TRACER = None
    provider.shutdown()


@contextlib.asynccontextmanager
async def tracing_from_env(env: Mapping[str, str] = os.environ) -> AsyncIterator[None]:
    """Tracing for the lifetime of the block when the environment asks for it.

    A misconfiguration is logged as ``tracing_not_started`` with the reason, and the proxy
    serves without traces rather than not at all.
    """
    if not wanted(env):
        yield
        return
    try:
        processors = processors_from_env(env)
    except TracingConfigError as exc:
        _log.error("tracing_not_started", reason=str(exc))
        yield
        return
    provider = start(*processors)
    _log.info("tracing_started", exporter=env.get("OTEL_TRACES_EXPORTER", "otlp"), pid=os.getpid())
    try:
        yield
    finally:
        await asyncio.to_thread(stop, provider)  # sending the last spans may take the exporter's timeout


# --- spans -------------------------------------------------------------------------------------

def traced(handler: Handler) -> Handler:
    """``handler`` inside a server span, the current span while it runs (for the client span and logs)."""

    tracer = TRACER
    assert tracer is not None, "tracing.start first"

    async def with_span(request: web.Request) -> web.StreamResponse:
        span = _start_server_span(tracer, request)
        request[SERVER_SPAN] = span
        token = otel_context.attach(trace.set_span_in_context(span))
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except (ConnectionError, asyncio.CancelledError):
            status = 499  # the client went away
            raise
        finally:
            otel_context.detach(token)
            _end_server_span(span, request, status)

    return with_span


def _start_server_span(tracer: trace.Tracer, request: web.Request) -> trace.Span:
    parent = None
    if request.headers.get("traceparent") is not None:
        trusted = request.app[INTAKE].trusted_proxies
        if forwarded_for(request.remote or "", (), trusted).peer_trusted:
            parent = _PROPAGATOR.extract(request.headers)
    return tracer.start_span(request.method, context=parent, kind=SpanKind.SERVER, attributes={
        "http.request.method": request.method,
        "network.peer.address": request.remote or "",
    })


def _end_server_span(span: trace.Span, request: web.Request, status: int) -> None:
    if span.is_recording():
        attributes: dict[str, Any] = {"http.response.status_code": status}
        record = request.get(RECORD)
        if record is not None:
            _record_attributes(span, attributes, request, record)
        if (user_agent := request.headers.get("User-Agent")) is not None:
            attributes["user_agent.original"] = user_agent
        span.set_attributes(attributes)
        if status >= 500:  # OpenTelemetry HTTP conventions: 4xx is the client's doing on a server span
            span.set_status(Status(StatusCode.ERROR))
            span.set_attribute("error.type", str(status))
    span.end()


def _record_attributes(span: trace.Span, attributes: dict[str, Any], request: web.Request,
                       record: RequestRecord) -> None:
    """What the request record knows: route, decision, caller, device."""
    attributes["ztproxy.request_id"] = record.request_id
    ctx = record.intake
    if ctx is not None:
        span.update_name(f"{request.method} {ctx.route.name}")
        attributes.update({"ztproxy.route": ctx.route.name, "url.path": ctx.target.path,
                           "url.scheme": ctx.scheme, "client.address": ctx.client_ip,
                           "server.address": ctx.host or ""})
    decision = record.decision
    if decision is not None:
        attributes["ztproxy.decision"] = decision.outcome.value
        attributes["ztproxy.reasons"] = list(decision.reasons)
        if decision.rule is not None:
            attributes["ztproxy.rule"] = decision.rule
    caller = record.caller
    if caller is not None:
        attributes["enduser.id"] = caller.subject
        attributes["ztproxy.session"] = caller.handle  # never the session id itself
    if record.device is not None:
        attributes["ztproxy.device"] = record.device.id


def start_client_span(method: str, url: URL, headers: CIMultiDict[str]) -> trace.Span:
    """The span of an upstream call, its context written into ``headers`` in place of the client's."""
    assert TRACER is not None
    span = TRACER.start_span(method, kind=SpanKind.CLIENT, attributes={
        "http.request.method": method,
        "server.address": url.raw_host or "",
        "server.port": url.port or 0,
        "url.full": str(url.with_query(None)),  # the query may carry secrets
    })
    for name in _TRACE_HEADERS:
        headers.popall(name, None)
    _PROPAGATOR.inject(headers, context=trace.set_span_in_context(span))
    return span


def end_client_span(span: trace.Span, status: int) -> None:
    """End it with the upstream's status, or (``status`` 0) with the error being raised."""
    if span.is_recording():
        if status:
            span.set_attribute("http.response.status_code", status)
            if status >= 400:  # OpenTelemetry HTTP conventions: any 4xx/5xx fails a client span
                span.set_status(Status(StatusCode.ERROR))
                span.set_attribute("error.type", str(status))
        else:
            error = sys.exc_info()[1]  # called from a ``finally``: the exception on its way out
            span.set_status(Status(StatusCode.ERROR))
            span.set_attribute("error.type", getattr(error, "code", None) or type(error).__name__)
    span.end()


# --- logs --------------------------------------------------------------------------------------

def current_ids() -> tuple[str, str] | None:
    """(trace id, span id) of the current span, hex, or None without one."""
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return None
    return format(span_context.trace_id, "032x"), format(span_context.span_id, "016x")


def add_trace_ids(logger: Any, method_name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: ``trace_id`` and ``span_id`` on events logged while a span is current."""
    if TRACER is not None and (ids := current_ids()) is not None:
        event_dict.setdefault("trace_id", ids[0])
        event_dict.setdefault("span_id", ids[1])
    return event_dict

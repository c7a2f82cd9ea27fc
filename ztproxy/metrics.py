"""Metrics: what ops watch at the admin listener's ``/metrics``, kept with OpenTelemetry's SDK.

One OpenTelemetry ``MeterProvider`` per process, read by OpenTelemetry's Prometheus reader
into a private registry (plus the process's CPU, memory and file descriptors), rendered in
Prometheus's text format by ``exposition``. Two kinds of measurement feed that reader:

- Per request (requests, latency, denials, step-ups, upstream latency): counted into plain
  series kept per label values (route, status, decision, caller), found with one dict lookup. The
  SDK's synchronous instruments clean and hash their attributes on every call, 10 to 30 µs
  each, measured: a tenth of the proxy's whole hot path per instrument. At collection the
  series are handed to the reader as OpenTelemetry data points (what the specification
  calls a MetricProducer), so they are named, typed and rendered like every other metric.
- Rare events (sign-ins, sessions ended, config reloads, revocation delay, active
  sessions): the SDK's own instruments, through the functions below that other modules call.

With several workers each one serves its exposition on a private unix socket
(``serve_exposition``) and the supervisor's admin listener merges them, each sample labelled
with its ``worker`` (``merge_expositions``).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
from bisect import bisect_left
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any, Protocol

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricsData,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.core import Metric as PrometheusFamily
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from ztproxy.policy import Decision, Outcome

# The compatibility text format: every Prometheus server version reads it.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
ANONYMOUS = "anonymous"  # the caller label of a request with no person or service established
NO_VALUE = "-"  # route or decision label of a request refused before it had one (no route name starts so)
# Seconds. The proxy's own work is sub-millisecond; upstreams and sign-ins take longer.
LATENCY_BOUNDS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                  1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
REVOCATION_BOUNDS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0)
_REMEMBERED_REVOCATIONS = 10_000
# Seconds from an access request to its decision: approvers answer in minutes or hours.
GRANT_DECISION_BOUNDS = (10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 4 * 3600.0, 12 * 3600.0, 86400.0)
_CUMULATIVE = AggregationTemporality.CUMULATIVE


class _Latency:
    """One histogram series: bucket counts over ``LATENCY_BOUNDS``, sum, min and max."""

    __slots__ = ("counts", "high", "low", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BOUNDS) + 1)
        self.total = 0.0
        self.low = math.inf
        self.high = -math.inf

    def record(self, seconds: float) -> None:
        self.counts[bisect_left(LATENCY_BOUNDS, seconds)] += 1  # bucket i holds (bound[i-1], bound[i]]
        self.total += seconds
        if seconds < self.low:
            self.low = seconds
        if seconds > self.high:
            self.high = seconds

    def point(self, attributes: dict[str, Any], start: int, now: int) -> HistogramDataPoint:
        count = sum(self.counts)
        return HistogramDataPoint(attributes=attributes, start_time_unix_nano=start, time_unix_nano=now,
                                  count=count, sum=self.total, bucket_counts=list(self.counts),
                                  explicit_bounds=LATENCY_BOUNDS, min=self.low if count else 0.0,
                                  max=self.high if count else 0.0)


class _RequestSeries:
    __slots__ = ("count", "latency")

    def __init__(self, latency: _Latency) -> None:
        self.count = 0
        self.latency = latency  # shared by every status of this (route, decision)


class RequestMetrics:
    """This process's per-request counts, each series made once and then found by its labels."""

    def __init__(self) -> None:
        self.started = time.time_ns()
        self._requests: dict[tuple[str, int, str, str], _RequestSeries] = {}
        self._latency: dict[tuple[str, str, str], _Latency] = {}
        self._upstream: dict[str, _Latency] = {}
        self._refusals: dict[tuple[Outcome, str, str, str], int] = {}

    def observe(self, route: str, status: int, decision: Decision | None, seconds: float,
                caller: str = ANONYMOUS) -> None:
        """One answered request, ``seconds`` after its handling began (streamed bodies included).

        ``caller``: ``person``, ``service`` or ``anonymous`` (nobody established).
        """
        # _value_ is a plain attribute; Enum.value is a property, a few hundred ns on this path.
        outcome = NO_VALUE if decision is None else decision.outcome._value_
        series = self._requests.get((route, status, outcome, caller))
        if series is None:
            latency = self._latency.setdefault((route, outcome, caller), _Latency())
            series = self._requests[(route, status, outcome, caller)] = _RequestSeries(latency)
        series.count += 1
        if status != 101:  # a WebSocket's time is the socket's lifetime, not the proxy's latency
            series.latency.record(seconds)
        if decision is not None and decision.outcome is not Outcome.ALLOW:
            refusals = self._refusals
            for reason in decision.reasons:
                key = (decision.outcome, route, reason, caller)
                refusals[key] = refusals.get(key, 0) + 1

    def observe_upstream(self, route: str, seconds: float) -> None:
        """Time from sending a request upstream to its response headers."""
        latency = self._upstream.get(route)
        if latency is None:
            latency = self._upstream[route] = _Latency()
        latency.record(seconds)

    def produce(self) -> list[Metric]:
        """The series as OpenTelemetry metrics (cumulative since this process started)."""
        start, now = self.started, time.time_ns()
        requests = [NumberDataPoint({"route": route, "status": str(status), "decision": outcome, "caller": caller},
                                    start, now, series.count)
                    for (route, status, outcome, caller), series in list(self._requests.items())]
        latency = [histogram.point({"route": route, "decision": outcome, "caller": caller}, start, now)
                   for (route, outcome, caller), histogram in list(self._latency.items())]
        upstream = [histogram.point({"route": route}, start, now)
                    for route, histogram in list(self._upstream.items())]
        denials: list[NumberDataPoint] = []
        step_ups: list[NumberDataPoint] = []
        for (outcome, route, reason, caller), count in list(self._refusals.items()):
            point = NumberDataPoint({"route": route, "reason": reason, "caller": caller}, start, now, count)
            (step_ups if outcome is Outcome.STEP_UP else denials).append(point)
        return [
            _sum("ztproxy.requests", "Requests answered, by route, HTTP status, policy decision "
                 "('-': refused before a route or a decision) and caller (person, service, anonymous)", requests),
            _histogram("ztproxy.request.duration", "Time from the start of a request's handling to its answer "
                       "(streamed bodies included, WebSockets left out)", latency),
            _histogram("ztproxy.upstream.duration", "Time from sending a request upstream to its response "
                       "headers (answered requests only: failures count in requests by status)", upstream),
            _sum("ztproxy.denials", "Requests the policy denied, once per reason of each denial", denials),
            _sum("ztproxy.step_ups", "Requests that needed a stronger or fresher sign-in, once per reason",
                 step_ups),
        ]


def _sum(name: str, description: str, points: list[NumberDataPoint]) -> Metric:
    return Metric(name=name, description=description, unit="",
                  data=Sum(data_points=points, aggregation_temporality=_CUMULATIVE, is_monotonic=True))


def _histogram(name: str, description: str, points: list[HistogramDataPoint]) -> Metric:
    return Metric(name=name, description=description, unit="s",
                  data=Histogram(data_points=points, aggregation_temporality=_CUMULATIVE))


class _Reader(PrometheusMetricReader):
    """OpenTelemetry's Prometheus reader, with the per-request series added at each collection."""

    def __init__(self, requests: RequestMetrics, registry: CollectorRegistry) -> None:
        super().__init__(disable_target_info=True, scope_info_enabled=False, registry=registry)
        self._requests = requests

    def _receive_metrics(self, metrics_data: MetricsData, timeout_millis: float = 10_000,
                         **kwargs: Any) -> None:
        scope = ScopeMetrics(scope=InstrumentationScope("ztproxy"), metrics=self._requests.produce(), schema_url="")
        produced = ResourceMetrics(resource=_RESOURCE, scope_metrics=[scope], schema_url="")
        resources = list(metrics_data.resource_metrics) if metrics_data is not None else []
        super()._receive_metrics(MetricsData(resource_metrics=[*resources, produced]), timeout_millis, **kwargs)


_RESOURCE = Resource.create({"service.name": "ztproxy"})
REQUESTS = RequestMetrics()
_registry = CollectorRegistry()
ProcessCollector(registry=_registry)
_provider = MeterProvider(
    metric_readers=[_Reader(REQUESTS, _registry)],
    resource=_RESOURCE,
    views=[View(instrument_name="ztproxy.revocation.delay",
                aggregation=ExplicitBucketHistogramAggregation(REVOCATION_BOUNDS)),
           View(instrument_name="ztproxy.risk.detection",
                aggregation=ExplicitBucketHistogramAggregation(REVOCATION_BOUNDS)),
           View(instrument_name="ztproxy.grants.decision.time",
                aggregation=ExplicitBucketHistogramAggregation(GRANT_DECISION_BOUNDS)),
           View(instrument_name="ztproxy.signal.enforcement",
                aggregation=ExplicitBucketHistogramAggregation(REVOCATION_BOUNDS))],
)
_meter = _provider.get_meter("ztproxy")
_logins = _meter.create_counter(
    "ztproxy.logins", description="Sign-ins by identity provider and result: started (sent to the IdP), "
    "completed (a session was made), refused (with the reason)")
_sessions_ended = _meter.create_counter(
    "ztproxy.sessions.ended", description="Sessions ended, by reason (logout, backchannel, refresh-rejected, "
    "admin, expired...)")
_reloads = _meter.create_counter("ztproxy.config.reloads", description="Configuration reloads, by result")
_signals = _meter.create_counter(
    "ztproxy.signals", description="Security events received, by event type and result (applied, ignored, "
                                   "unmatched, rejected with its reason)")
_signal_enforcement = _meter.create_histogram(
    "ztproxy.signal.enforcement", unit="s",
    description="Time from accepting a security event to the first request it refused in this process, "
    "by event type")
_signal_stream_problems = _meter.create_counter(
    "ztproxy.signal.stream.problems", description="Problems with a transmitter's stream, by transmitter and problem: "
    "setup-failed (unreachable at start: asked again), keys-unavailable, verification-failed, status-failed, "
    "poll-failed, paused or disabled (by the transmitter: nothing is delivered)")
_signals_sent = _meter.create_counter(
    "ztproxy.signals.sent", description="Security events pushed to receivers (CAEP session-revoked to the apps), "
    "by receiver and result: delivered, retried, rejected (a 400), failed (given up), dropped (queue full)")
_shadow_disagreements = _meter.create_counter(
    "ztproxy.shadow.disagreements", description="Requests a route's shadow policy decided differently from the "
    "enforced one, by route and the two decisions")
_revocation_delay = _meter.create_histogram(
    "ztproxy.revocation.delay", unit="s",
    description="Time from a revocation to the first request it denied in this process")
_risk_signals = _meter.create_counter(
    "ztproxy.risk.signals", description="Session risk signals, by signal and the action taken")
_risk_detection = _meter.create_histogram(
    "ztproxy.risk.detection", unit="s",
    description="Time to detect, by signal: for concurrent-use, from the first request from the second "
    "network to the request that made the use concurrent")
_grant_events = _meter.create_counter(
    "ztproxy.grants.events", description="Just-in-time access, by route and step: requested, approved (each "
    "approval), started, denied, cancelled, ended, expired")
_grant_decision_time = _meter.create_histogram(
    "ztproxy.grants.decision.time", unit="s",
    description="Time from an access request to the decision that approved (completed) or denied it, by route")
_active_sources: list[Callable[[], int]] = []
_grant_sources: list[Callable[[], int]] = []


def _observe_grants(options: CallbackOptions) -> Iterable[Observation]:
    if _grant_sources:
        yield Observation(max(source() for source in _grant_sources))  # every worker sees every grant


def _observe_active(options: CallbackOptions) -> Iterable[Observation]:
    if _active_sources:
        yield Observation(sum(source() for source in _active_sources))


_sign_sources: list[Callable[[], int]] = []


def _observe_signs(options: CallbackOptions) -> Iterable[Observation]:
    yield Observation(sum(count() for count in _sign_sources))


class ReachabilityView(Protocol):
    @property
    def last_known_reachable(self) -> bool: ...


_idp_sources: list[Mapping[str, ReachabilityView]] = []


def _observe_idps(options: CallbackOptions) -> Iterable[Observation]:
    for views in _idp_sources:
        for name, view in views.items():
            yield Observation(1 if view.last_known_reachable else 0, {"provider": name})


_meter.create_observable_gauge(
    "ztproxy.idp.reachable", callbacks=[_observe_idps],
    description="Whether each identity provider answered this process's last call or check (1) or not (0)")
_meter.create_observable_counter(
    "ztproxy.assertion.signs", callbacks=[_observe_signs],
    description="Identity assertions signed (the rest were served from the per-(session, route) cache)")
_meter.create_observable_gauge(
    "ztproxy.sessions.active", callbacks=[_observe_active],
    description="Sessions this process has served recently (see watch_active_sessions)")
_meter.create_observable_gauge(
    "ztproxy.grants.active", callbacks=[_observe_grants],
    description="Grants active now (every replica counts all of them)")
for _result in ("ok", "failed"):
    _reloads.add(0, {"result": _result})  # shown at 0 before the first reload


def exposition() -> bytes:
    """This process's metrics in Prometheus's text format."""
    return generate_latest(_registry)


# --- events other modules report ---------------------------------------------------------------

def shadow_disagreement(route: str, enforced: str, shadow: str) -> None:
    """A shadow policy decided ``shadow`` where the enforced one decided ``enforced``."""
    _shadow_disagreements.add(1, {"route": route, "enforced": enforced, "shadow": shadow})


def login_started(provider: str) -> None:
    _logins.add(1, {"provider": provider, "result": "started"})


def login_completed(provider: str) -> None:
    _logins.add(1, {"provider": provider, "result": "completed"})


def login_refused(provider: str, reason: str) -> None:
    """``reason``: the short code of the refusal, as in the ``login_refused`` log event."""
    _logins.add(1, {"provider": provider, "result": "refused", "reason": reason})


def session_ended(reason: str, count: int = 1) -> None:
    """Sessions ended on purpose: ``logout``, ``backchannel``, ``refresh-rejected``, ``admin``..."""
    if count > 0:
        _sessions_ended.add(count, {"reason": reason})


def signal_received(event: str, result: str, reason: str | None = None) -> None:
    """A security event pushed by a transmitter: ``event`` its type URI's last segment, or "-"
    when it was rejected unread; ``reason`` the RFC 8935 error code of a rejection."""
    _signals.add(1, {"event": event, "result": result, **({"reason": reason} if reason else {})})


def signal_stream_problem(transmitter: str, problem: str) -> None:
    _signal_stream_problems.add(1, {"transmitter": transmitter, "problem": problem})


def signal_sent(receiver: str, result: str) -> None:
    """A security event pushed (or not) to one of ``signals.receivers``."""
    _signals_sent.add(1, {"receiver": receiver, "result": result})


def risk_signal(signal: str, action: str) -> None:
    _risk_signals.add(1, {"signal": signal, "action": action})


def risk_detected(signal: str, seconds: float) -> None:
    _risk_detection.record(max(0.0, seconds), {"signal": signal})


def config_reloaded(ok: bool) -> None:
    _reloads.add(1, {"result": "ok" if ok else "failed"})


_timed_revocations: dict[str, None] = {}


def revocation_enforced(revocation: str, revoked_at: float, now: float) -> None:
    """A request was denied because of ``revocation`` (made at ``revoked_at``, Unix time).

    Only the first denial of each revocation in this process is timed: that is how long the
    revocation took to take effect here. ``revocation`` is any stable key of it (the
    revoked session's store key, say). Clocks of other replicas may differ: a negative delay
    counts as 0.
    """
    if revocation in _timed_revocations:
        return
    if len(_timed_revocations) >= _REMEMBERED_REVOCATIONS:
        del _timed_revocations[next(iter(_timed_revocations))]
    _timed_revocations[revocation] = None
    _revocation_delay.record(max(0.0, now - revoked_at))


def grant_event(route: str, step: str) -> None:
    """A step of an access request (``requested``, ``approved``, ``started``, ``denied``...)."""
    _grant_events.add(1, {"route": route, "step": step})


def grant_decided(route: str, decision: str, seconds: float) -> None:
    """A request approved (the approval that completed it) or denied, ``seconds`` after it was made."""
    _grant_decision_time.record(max(0.0, seconds), {"route": route, "decision": decision})


def watch_active_grants(count: Callable[[], int]) -> Callable[[], None]:
    """Report ``count()`` as ``ztproxy_grants_active`` at each scrape; returns how to stop."""
    _grant_sources.append(count)
    return lambda: _grant_sources.remove(count)


_timed_signals: dict[str, None] = {}


def signal_enforced(event: str, effect: str, accepted_at: float, now: float) -> None:
    """A request was refused because of a security event of type ``event`` accepted at
    ``accepted_at`` (Unix time, on whichever replica accepted it). Only the first refusal of
    each ``effect`` (a stable key of what the event did) in this process is timed."""
    if effect in _timed_signals:
        return
    if len(_timed_signals) >= _REMEMBERED_REVOCATIONS:
        del _timed_signals[next(iter(_timed_signals))]
    _timed_signals[effect] = None
    _signal_enforcement.record(max(0.0, now - accepted_at), {"event": event})


def watch_assertion_signs(count: Callable[[], int]) -> Callable[[], None]:
    """Report ``count()`` (a signer's running total) in ``ztproxy_assertion_signs_total``."""
    _sign_sources.append(count)
    return lambda: _sign_sources.remove(count)


def watch_idp_reachability(views: Mapping[str, ReachabilityView]) -> Callable[[], None]:
    """Report each IdP's view (by provider name) as ``ztproxy_idp_reachable``; returns the stop."""
    _idp_sources.append(views)
    return lambda: _idp_sources.remove(views)


def watch_active_sessions(count: Callable[[], int]) -> Callable[[], None]:
    """Report ``count()`` (summed with other sources) as ``ztproxy_sessions_active`` at each scrape.

    Returns the function that stops it (call it when what ``count`` reads goes away).
    """
    _active_sources.append(count)
    return lambda: _active_sources.remove(count)


# --- several workers: one exposition each, merged by the supervisor ------------------------------

@contextlib.asynccontextmanager
async def serve_exposition(path: str | None) -> AsyncIterator[None]:
    """Answer each connection to the unix socket ``path`` with this process's exposition, then close.

    No HTTP: the supervisor connects and reads until the end. The socket lives in a
    directory only this user can open (the supervisor's private temp dir).
    """
    if path is None:
        yield
        return

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            writer.write(exposition())
            await writer.drain()
        writer.close()

    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # left by a worker that crashed in this slot
    server = await asyncio.start_unix_server(answer, path)
    try:
        yield
    finally:
        server.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


class _Families(Collector):
    def __init__(self, families: Iterable[PrometheusFamily]) -> None:
        self._families = list(families)

    def collect(self) -> Iterable[PrometheusFamily]:
        return self._families


def merge_expositions(sources: Iterable[tuple[str, str | None]], label: str = "worker") -> bytes:
    """One exposition of several processes: every sample gets ``label="<source name>"``.

    Families keep the order they first appear in and are written once (one HELP and one
    TYPE line), with the samples of every source. A source that sent nothing, or text that
    does not parse, is left out and shows as 0 in ``ztproxy_worker_up``.
    """
    families: dict[str, PrometheusFamily] = {}
    up = GaugeMetricFamily("ztproxy_worker_up", "Whether this process's metrics were read at this scrape",
                           labels=[label])
    for source, text in sources:
        try:
            parsed = list(text_string_to_metric_families(text)) if text is not None else None
        except ValueError:
            parsed = None
        up.add_metric([source], 0 if parsed is None else 1)
        for family in parsed or ():
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = PrometheusFamily(family.name, family.documentation, family.type,
                                                                  family.unit)
            if merged.type != family.type:
                continue  # another version of the same name: keep the first one's shape
            merged.samples.extend(sample._replace(labels={**sample.labels, label: source})
                                  for sample in family.samples)
    return generate_latest(_Families([*families.values(), up]))

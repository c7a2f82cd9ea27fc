"""Metrics: the per-request series, the events other modules report, and the merge of worker expositions."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from ztproxy import metrics
from ztproxy.metrics import LATENCY_BOUNDS, NO_VALUE, RequestMetrics, merge_expositions
from ztproxy.policy import Decision, Outcome

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

ALLOW = Decision(Outcome.ALLOW, ("public",))
DENY = Decision(Outcome.DENY, ("group-missing", "device-unmanaged"))
STEP_UP = Decision(Outcome.STEP_UP, ("mfa-required",))


def samples(text: str) -> Samples:
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(found: Samples, name: str, **labels: str) -> float:
    """The sum over every series of ``name`` whose labels include ``labels`` (0 when there is none)."""
    wanted = labels.items()
    return sum(v for (n, series), v in found.items() if n == name and wanted <= series)


def changes(before: Samples, after: Samples) -> Callable[..., float]:
    """How much a series (see ``value``) grew from ``before`` to ``after``."""
    return lambda name, **labels: value(after, name, **labels) - value(before, name, **labels)


def scrape() -> Samples:
    return samples(metrics.exposition().decode())


def test_requests_are_counted_by_route_status_and_decision() -> None:
    before = scrape()
    metrics.REQUESTS.observe("unit-wiki", 200, ALLOW, 0.0002)
    metrics.REQUESTS.observe("unit-wiki", 200, ALLOW, 0.0004)
    metrics.REQUESTS.observe("unit-wiki", 403, DENY, 0.0003)
    metrics.REQUESTS.observe(NO_VALUE, 404, None, 0.0001)
    delta = changes(before, scrape())
    assert delta("ztproxy_requests_total", route="unit-wiki", status="200", decision="allow") == 2
    assert delta("ztproxy_requests_total", route="unit-wiki", status="403", decision="deny") == 1
    assert delta("ztproxy_requests_total", route="-", status="404", decision="-") == 1
    assert delta("ztproxy_request_duration_seconds_count", route="unit-wiki", decision="allow") == 2
    assert math.isclose(delta("ztproxy_request_duration_seconds_sum", route="unit-wiki", decision="allow"), 0.0006)
    # Each reason of a denial counts once.
    assert delta("ztproxy_denials_total", route="unit-wiki", reason="group-missing") == 1
    assert delta("ztproxy_denials_total", route="unit-wiki", reason="device-unmanaged") == 1
    assert delta("ztproxy_step_ups_total", route="unit-wiki", reason="group-missing") == 0


def test_requests_denials_and_latency_are_labelled_by_caller() -> None:
    before = scrape()
    metrics.REQUESTS.observe("unit-api", 200, ALLOW, 0.0002, "service")
    metrics.REQUESTS.observe("unit-api", 200, ALLOW, 0.0002, "person")
    metrics.REQUESTS.observe("unit-api", 401, DENY, 0.0001, "service")
    metrics.REQUESTS.observe("unit-api", 401, DENY, 0.0001)  # nobody established
    delta = changes(before, scrape())
    assert delta("ztproxy_requests_total", route="unit-api", status="200", caller="service") == 1
    assert delta("ztproxy_requests_total", route="unit-api", status="200", caller="person") == 1
    assert delta("ztproxy_requests_total", route="unit-api", status="401", caller="anonymous") == 1
    assert delta("ztproxy_request_duration_seconds_count", route="unit-api", decision="deny", caller="service") == 1
    assert delta("ztproxy_denials_total", route="unit-api", reason="group-missing", caller="service") == 1
    assert delta("ztproxy_denials_total", route="unit-api", reason="group-missing", caller="anonymous") == 1
    assert delta("ztproxy_denials_total", route="unit-api", reason="group-missing", caller="person") == 0


def test_step_ups_count_apart_from_denials() -> None:
    requests = RequestMetrics()
    requests.observe("pay", 302, STEP_UP, 0.001, "person")
    requests.observe("pay", 401, STEP_UP, 0.001, "person")
    produced = {metric.name: metric for metric in requests.produce()}
    [step_up] = produced["ztproxy.step_ups"].data.data_points
    assert dict(step_up.attributes or {}) == {"route": "pay", "reason": "mfa-required", "caller": "person"}
    assert step_up.value == 2  # type: ignore[union-attr]
    assert list(produced["ztproxy.denials"].data.data_points) == []


def test_latency_buckets_hold_values_up_to_their_bound() -> None:
    requests = RequestMetrics()
    requests.observe("r", 200, ALLOW, LATENCY_BOUNDS[2])  # exactly on a bound: that bucket (le)
    requests.observe("r", 200, ALLOW, LATENCY_BOUNDS[2] * 1.01)  # just over: the next one
    requests.observe("r", 200, ALLOW, LATENCY_BOUNDS[-1] * 2)  # past the last: +Inf
    produced = {metric.name: metric for metric in requests.produce()}
    [point] = produced["ztproxy.request.duration"].data.data_points
    counts = list(point.bucket_counts)  # type: ignore[union-attr]
    assert counts[2] == 1 and counts[3] == 1 and counts[-1] == 1 and sum(counts) == 3
    assert point.min == LATENCY_BOUNDS[2] and point.max == LATENCY_BOUNDS[-1] * 2  # type: ignore[union-attr]


def test_a_websocket_counts_as_a_request_but_its_lifetime_is_no_latency() -> None:
    requests = RequestMetrics()
    requests.observe("chat", 101, ALLOW, 3600.0)
    produced = {metric.name: metric for metric in requests.produce()}
    [count] = produced["ztproxy.requests"].data.data_points
    [latency] = produced["ztproxy.request.duration"].data.data_points
    assert count.value == 1 and latency.count == 0  # type: ignore[union-attr]


def test_upstream_latency_per_route() -> None:
    requests = RequestMetrics()
    requests.observe_upstream("a", 0.002)
    requests.observe_upstream("a", 0.004)
    requests.observe_upstream("b", 0.5)
    produced = {metric.name: metric for metric in requests.produce()}
    points = {point.attributes["route"]: point for point in produced["ztproxy.upstream.duration"].data.data_points
              if point.attributes}
    assert points["a"].count == 2 and math.isclose(points["a"].sum, 0.006)  # type: ignore[union-attr]
    assert points["b"].count == 1  # type: ignore[union-attr]


def test_events_other_modules_report() -> None:
    before = scrape()
    metrics.login_started("unit-idp")
    metrics.login_completed("unit-idp")
    metrics.login_refused("unit-idp", "state-replayed")
    metrics.session_ended("unit-logout")
    metrics.session_ended("unit-backchannel", 3)
    metrics.session_ended("unit-backchannel", 0)  # nothing ended: nothing counted
    metrics.config_reloaded(ok=False)
    after = scrape()
    delta = changes(before, after)
    assert delta("ztproxy_logins_total", provider="unit-idp", result="started", reason="") == 1
    assert delta("ztproxy_logins_total", provider="unit-idp", result="completed", reason="") == 1
    assert delta("ztproxy_logins_total", provider="unit-idp", result="refused", reason="state-replayed") == 1
    assert delta("ztproxy_sessions_ended_total", reason="unit-logout") == 1
    assert delta("ztproxy_sessions_ended_total", reason="unit-backchannel") == 3
    assert delta("ztproxy_config_reloads_total", result="failed") == 1
    assert ("ztproxy_config_reloads_total", frozenset({("result", "ok")})) in after  # shown before any reload


def test_revocation_delay_is_timed_once_per_revocation() -> None:
    before = scrape()
    metrics.revocation_enforced("unit-session-1", revoked_at=1000.0, now=1000.3)
    metrics.revocation_enforced("unit-session-1", revoked_at=1000.0, now=1005.0)  # a later denial: not timed
    metrics.revocation_enforced("unit-session-2", revoked_at=2000.0, now=1999.0)  # another replica's clock ahead
    after = scrape()
    name = "ztproxy_revocation_delay_seconds"
    assert value(after, f"{name}_count") - value(before, f"{name}_count") == 2
    assert math.isclose(value(after, f"{name}_sum") - value(before, f"{name}_sum"), 0.3)
    assert value(after, f"{name}_bucket", le="0.5") - value(before, f"{name}_bucket", le="0.5") == 2


def test_active_sessions_gauge_sums_its_sources_until_unwatched() -> None:
    unwatch_a = metrics.watch_active_sessions(lambda: 3)
    unwatch_b = metrics.watch_active_sessions(lambda: 4)
    try:
        assert value(scrape(), "ztproxy_sessions_active") == 7
    finally:
        unwatch_a()
        unwatch_b()
    assert ("ztproxy_sessions_active", frozenset()) not in scrape()


def test_process_metrics_are_exposed() -> None:
    assert value(scrape(), "process_resident_memory_bytes") > 0


WORKER_TEXT = """# HELP ztproxy_requests_total Requests answered
# TYPE ztproxy_requests_total counter
ztproxy_requests_total{{route="app",status="200",decision="allow"}} {count}
# HELP ztproxy_request_duration_seconds Time
# TYPE ztproxy_request_duration_seconds histogram
ztproxy_request_duration_seconds_bucket{{route="app",le="0.001"}} {count}
ztproxy_request_duration_seconds_bucket{{route="app",le="+Inf"}} {count}
ztproxy_request_duration_seconds_count{{route="app"}} {count}
ztproxy_request_duration_seconds_sum{{route="app"}} 0.5
"""


def test_merge_labels_every_sample_with_its_worker_and_writes_each_family_once() -> None:
    merged = merge_expositions([("0", WORKER_TEXT.format(count=3)), ("1", WORKER_TEXT.format(count=5))]).decode()
    assert merged.count("# TYPE ztproxy_requests_total counter") == 1
    assert merged.count("# HELP ztproxy_request_duration_seconds ") == 1
    found = samples(merged)
    assert value(found, "ztproxy_requests_total", route="app", status="200", decision="allow", worker="0") == 3
    assert value(found, "ztproxy_requests_total", route="app", status="200", decision="allow", worker="1") == 5
    assert value(found, "ztproxy_request_duration_seconds_bucket", route="app", le="+Inf", worker="1") == 5
    assert value(found, "ztproxy_worker_up", worker="0") == 1
    # A family's samples stay together (the text format requires it): worker 1's follow worker 0's.
    lines = [line for line in merged.splitlines() if line.startswith("ztproxy_requests_total")]
    assert [('worker="0"' in lines[0]), ('worker="1"' in lines[1])] == [True, True]


def test_merge_leaves_out_a_worker_that_did_not_answer_or_sent_garbage() -> None:
    merged = merge_expositions([("0", WORKER_TEXT.format(count=1)), ("1", None), ("2", "this is { not metrics")])
    found = samples(merged.decode())
    assert value(found, "ztproxy_worker_up", worker="0") == 1
    assert ("ztproxy_worker_up", frozenset({("worker", "1")})) in found
    assert value(found, "ztproxy_worker_up", worker="1") == 0
    assert value(found, "ztproxy_worker_up", worker="2") == 0
    assert not any(dict(labels).get("worker") == "2" for name, labels in found if name != "ztproxy_worker_up")


async def test_a_worker_serves_its_exposition_on_a_unix_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "worker.sock")
    Path(path).write_text("left by a crashed worker")  # a stale file in the slot is replaced
    async with metrics.serve_exposition(path):
        reader, writer = await asyncio.open_unix_connection(path)
        data = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        assert b"# TYPE ztproxy_requests_total counter" in data
    assert not Path(path).exists()

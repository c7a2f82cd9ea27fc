"""The grants' metrics as Prometheus reads them: steps, time to decision, active grants."""

from __future__ import annotations

from tests.unit.test_metrics import changes, scrape, value
from ztproxy import metrics


def test_steps_decisions_and_active_grants() -> None:
    before = scrape()
    metrics.grant_event("unit-payroll", "requested")
    metrics.grant_event("unit-payroll", "requested")
    metrics.grant_event("unit-payroll", "denied")
    metrics.grant_decided("unit-payroll", "approved", 45.0)
    metrics.grant_decided("unit-payroll", "denied", -1.0)  # another replica's clock ahead: 0
    after = scrape()
    delta = changes(before, after)
    assert delta("ztproxy_grants_events_total", route="unit-payroll", step="requested") == 2
    assert delta("ztproxy_grants_events_total", route="unit-payroll", step="denied") == 1
    name = "ztproxy_grants_decision_time_seconds"
    assert value(after, f"{name}_sum", route="unit-payroll", decision="approved") == 45.0
    assert value(after, f"{name}_bucket", route="unit-payroll", decision="approved", le="60.0") == 1
    assert value(after, f"{name}_bucket", route="unit-payroll", decision="approved", le="30.0") == 0
    assert value(after, f"{name}_sum", route="unit-payroll", decision="denied") == 0.0
    unwatch = metrics.watch_active_grants(lambda: 3)
    try:
        assert value(scrape(), "ztproxy_grants_active") == 3
    finally:
        unwatch()

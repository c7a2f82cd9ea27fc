"""Policies about services as code: test cases and explain name a service instead of a person."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from ztproxy.config import load_text
from ztproxy.errors import ConfigError
from ztproxy.policy.breakdown import rule_by_rule
from ztproxy.policy.suite import case_from_mapping, run_cases

NOW = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)
CONFIG = """
server: {public_url: "https://orders.corp.example"}
identity_providers:
  - {issuer: "https://idp.corp.example", client_id: ztproxy, client_secret: s}
routes:
  - name: orders
    host: orders.corp.example
    upstream: http://127.0.0.1:9000
    allow:
      - {clients: [billing], scopes: [orders.read]}
      - {services: ["spiffe://corp.example/jobs/**"]}
      - {email_domains: [corp.example]}
"""


def case(identity: dict[str, object], expect: dict[str, object] | None = None):  # type: ignore[no-untyped-def]
    mapping: dict[str, object] = {"name": "c", "request": {"url": "https://orders.corp.example/o"},
                                  "identity": identity}
    if expect is not None:
        mapping["expect"] = expect
    return case_from_mapping(mapping, NOW)


def test_a_token_caller_and_a_workload_are_judged_by_the_service_rules() -> None:
    config = load_text(CONFIG)
    report = run_cases(config, [
        case({"client_id": "billing", "scopes": ["orders.read"]}, {"decision": "allow"}),
        case({"client_id": "billing", "scopes": []}, {"decision": "deny", "reasons": ["scope-missing"]}),
        case({"client_id": "reports", "scopes": ["orders.read"]}, {"decision": "deny"}),
        case({"service": "spiffe://corp.example/jobs/nightly/backup"}, {"decision": "allow"}),
        case({"service": "spiffe://evil.example/jobs/x"}, {"decision": "deny"}),
    ])
    assert report.exit_code == 0, report.lines


def test_a_service_never_passes_a_person_rule_nor_a_person_a_service_rule() -> None:
    config = load_text(CONFIG.replace("      - {email_domains: [corp.example]}\n", ""))
    person = case({"sub": "u-1", "email": "ada@corp.example"})
    lines = rule_by_rule(config, person.host, person.facts)
    assert lines[2] == "decision: deny (service-required)"
    service_only = load_text(CONFIG.replace("      - {clients: [billing], scopes: [orders.read]}\n", "")
                             .replace('      - {services: ["spiffe://corp.example/jobs/**"]}\n', ""))
    caller = case({"client_id": "billing", "scopes": ["orders.read"]})
    assert rule_by_rule(service_only, caller.host, caller.facts)[2] == "decision: deny (authentication-required)"


def test_a_service_identity_is_checked_like_any_case() -> None:
    with pytest.raises(ConfigError, match="expected a SPIFFE ID"):
        case({"service": "billing"})
    with pytest.raises(ConfigError, match=r"identity\.scopes"):
        case({"client_id": "billing", "scopes": "orders.read"})

"""The grants section and the grant criterion: every mistake reported at once, with its YAML path."""

from __future__ import annotations

import pytest

from ztproxy.config import load_text
from ztproxy.errors import ConfigError

PROVIDER = "identity_providers: [{name: corp, issuer: https://idp.corp.example, client_id: z, client_secret: s}]"


def test_every_mistake_with_its_path() -> None:
    with pytest.raises(ConfigError) as caught:
        load_text(f"""
{PROVIDER}
grants:
  max_pending_per_user: 0
  request_ttl: soon
  webhooks:
    - {{url: https://hooks.corp.example/a}}
    - {{url: https://hooks.corp.example/b, secret: short}}
    - {{url: not-a-url, format: slack}}
routes:
  - name: payroll
    upstream: http://127.0.0.1:9
    allow: [{{grant: {{approvers: {{groups: []}}, max_duration: -1h, approvals: 0}}}}]
""")
    text = caught.value.render()
    for path in ("grants.max_pending_per_user", "grants.request_ttl", "grants.webhooks[0]", "grants.webhooks[1]",
                 "grants.webhooks[2].url", "routes[0].allow[0].grant.approvers.groups",
                 "routes[0].allow[0].grant.max_duration", "routes[0].allow[0].grant.approvals"):
        assert path in text, text
    assert "short" not in text.replace("too short", "")  # a secret is never repeated


def test_defaults_and_a_slack_hook_without_a_secret() -> None:
    config = load_text(f"""
{PROVIDER}
grants:
  webhooks: [{{url: https://hooks.slack.com/services/x, format: slack, groups: [payroll-leads]}}]
routes:
  - {{name: payroll, upstream: http://127.0.0.1:9, allow: [{{grant: {{approvers: {{groups: [leads]}}}}}}]}}
""")
    assert (config.grants.max_pending_per_user, config.grants.request_ttl, config.grants.retention) == (
        5, 86400.0, 7 * 86400.0)
    grant = config.routes[0].allow[0].grant
    assert grant is not None and (grant.max_duration, grant.reason, grant.approvals, grant.approval_mfa) == (
        4 * 3600.0, "required", 1, True)


def test_a_routes_grant_rules_agree_on_their_terms() -> None:
    base = f"""
{PROVIDER}
policies:
  leads: [{{email_domains: [corp.example], grant: {{approvers: {{groups: [leads]}}, max_duration: 2h}}}}]
routes:
  - name: payroll
    upstream: http://127.0.0.1:9
    allow:
      - leads
      - {{groups: [contractors], grant: {{approvers: {{groups: [leads]}}, max_duration: TERMS}}}}
"""
    same = load_text(base.replace("TERMS", "2h"))
    assert len(same.routes[0].allow) == 2
    with pytest.raises(ConfigError) as caught:
        load_text(base.replace("TERMS", "8h"))
    assert "routes[0].allow[1]" in caught.value.render() and "different terms" in caught.value.render()

"""Policy as code: the tests file, the runner and its coverage, explain, diff."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.conftest import REPO
from ztproxy.cli import main
from ztproxy.config import Config, load, load_text
from ztproxy.errors import ConfigError
from ztproxy.policy.breakdown import rule_by_rule
from ztproxy.policy.reasons import AUTH_TOO_OLD
from ztproxy.policy.suite import Case, case_from_mapping, diff_cases, load_cases, run_cases

NOW = datetime(2024, 5, 6, 10, 0, tzinfo=UTC)

CONFIG = """
server: {public_url: "https://login.corp.example"}
identity_providers: [{name: corp, issuer: "https://idp.corp.example", client_id: ztproxy, client_secret: s3cret}]
sessions: {cookie_domain: corp.example}
policies:
  employees: [{email_domains: [corp.example]}]
routes:
  - name: wiki
    host: wiki.corp.example
    upstream: http://127.0.0.1:8002
    allow:
      - employees
      - {groups: [contractors], methods: [GET]}
    deny:
      - {source_cidrs: [192.0.2.0/24]}
  - name: payroll
    host: payroll.corp.example
    upstream: http://127.0.0.1:8003
    allow:
      - {groups: [payroll-admin], mfa: true, max_auth_age: 15m, device: {managed: true}}
"""

TESTS = """
- name: employee reads the wiki
  request: {url: "https://wiki.corp.example/page"}
  identity: {sub: u-1, email: ada@corp.example}
  expect: {decision: allow, route: wiki}
- name: contractor cannot edit
  request: {method: POST, url: "https://wiki.corp.example/page"}
  identity: {sub: c-1, email: bob@partner.example, groups: [contractors]}
  expect: {decision: deny, reasons: [method-not-allowed]}
- name: payroll needs a fresh login
  request: {url: "https://payroll.corp.example/", time: "2024-05-06T12:00:00+02:00"}
  identity: {sub: p-1, groups: [payroll-admin], mfa: true, auth_age: 1h}
  device: {id: laptop, managed: true}
  expect: {decision: step-up, route: payroll, reasons: [auth-too-old]}
- name: unknown host
  request: {url: "https://nowhere.corp.example/"}
  expect: {decision: no-route}
"""


@pytest.fixture
def config() -> Config:
    return load_text(CONFIG)


def cases(tmp_path: Path, text: str) -> list[Case]:
    path = tmp_path / "tests.yaml"
    path.write_text(text)
    return load_cases(path, NOW)


def errors(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        cases(tmp_path, text)
    return caught.value.render()


def test_a_case_becomes_host_and_facts(tmp_path: Path) -> None:
    payroll = cases(tmp_path, TESTS)[2]
    assert payroll.host == "payroll.corp.example"
    assert payroll.facts.path == "/"
    assert payroll.facts.method == "GET"
    assert payroll.facts.client_ip == "127.0.0.1"
    assert payroll.facts.now == NOW
    assert payroll.facts.identity is not None
    assert payroll.facts.identity.auth_time == NOW - timedelta(hours=1)
    assert payroll.facts.identity.groups == frozenset({"payroll-admin"})
    assert payroll.facts.device is not None and payroll.facts.device.managed
    assert payroll.expect is not None and payroll.expect.reasons == (AUTH_TOO_OLD,)


def test_defaults_without_time_identity_or_device(tmp_path: Path) -> None:
    unknown = cases(tmp_path, TESTS)[3]
    assert unknown.facts.now == NOW
    assert unknown.facts.identity is None and unknown.facts.device is None


def test_every_problem_is_reported_with_case_field_and_line(tmp_path: Path) -> None:
    report = errors(tmp_path, """
- name: one
  request: {url: "wiki.corp.example/x", method: 3, time: "2024-05-06T10:00:00"}
  identity: {sub: u, mfa: yes please, auth_age: 5 minutes, grups: [a]}
  device: {score: 200}
  expect: {decision: maybe, reasons: x}
- name: one
  request: {url: "https://a.example/"}
- 3
""")
    for expected in (
        'line 3: case "one", request.url: expected an absolute http(s) URL',
        'line 3: case "one", request.method: expected a non-empty string, got a number',
        'line 3: case "one", request.time: the time needs a zone',
        "line 4: case \"one\", identity.grups: unknown key 'grups' (did you mean 'groups'?)",
        'line 4: case "one", identity.mfa: expected true or false',
        "line 4: case \"one\", identity.auth_age: invalid duration '5 minutes'",
        'line 5: case "one", device.score: expected a whole number from 0 to 100',
        'line 6: case "one", expect.decision: expected one of allow, deny, step-up, no-route',
        'line 6: case "one", expect.reasons: expected a list of strings',
        "line 7: case \"one\", name: duplicate case name 'one'",
        "line 7: case \"one\": missing required key 'expect'",
        "line 9: case [2]: expected a mapping (key: value), got a number",
    ):
        assert expected in report


@pytest.mark.parametrize(("text", "message"), [
    ("{}", "expected a non-empty list of test cases, got a mapping"),
    ("[]", "expected a non-empty list of test cases, got a list"),
    ("- {request: {url: 'https://a.example/'}, expect: {decision: allow}}", "missing required key 'name'"),
    ("- {name: x, expect: {decision: allow}}", "missing required key 'request'"),
    ("- {name: x, request: {url: 'https://a.example/'}, expect: {}}", "missing required key 'decision'"),
    ("- {name: x, request: {url: 'https://a.example/%2F'}, expect: {decision: allow}}", "encoded slash in path"),
    ("- {name: x, request: {url: 'https://a.example/', client_ip: nope}, expect: {decision: allow}}",
     "expected an IP address"),
    ("- {name: x, request: {url: 'https://a.example/'}, identity: {groups: [a]}, expect: {decision: allow}}",
     "give at least 'sub' or 'email'"),
    ("- {name: x, request: {url: 'https://a.example/'}, expect: {decision: allow}, extra: 1}", "unknown key 'extra'"),
    ("- name: [unclosed", "line 1"),
])
def test_bad_files_are_refused(tmp_path: Path, text: str, message: str) -> None:
    assert message in errors(tmp_path, text)


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_cases(tmp_path / "missing.yaml", NOW)


def test_the_runner_passes_matching_cases(tmp_path: Path, config: Config) -> None:
    report = run_cases(config, cases(tmp_path, TESTS))
    assert report.lines[:4] == ("PASS employee reads the wiki", "PASS contractor cannot edit",
                                "PASS payroll needs a fresh login", "PASS unknown host")
    assert report.lines[4] == "4 passed, 0 failed"
    assert report.exit_code == 0


def test_the_runner_reports_failures(tmp_path: Path, config: Config) -> None:
    report = run_cases(config, cases(tmp_path, """
- name: wrong decision
  request: {url: "https://wiki.corp.example/"}
  expect: {decision: allow}
- name: wrong route
  request: {url: "https://wiki.corp.example/"}
  expect: {decision: deny, route: payroll}
- name: missing reason
  request: {url: "https://wiki.corp.example/"}
  expect: {decision: deny, reasons: [group-missing, mfa-required]}
- name: expected a route
  request: {url: "https://nowhere.example/"}
  expect: {decision: deny}
"""))
    assert report.lines[:5] == (
        "FAIL wrong decision: expected allow, got deny (reasons: authentication-required)",
        "FAIL wrong route: expected route payroll, got wiki",
        "FAIL missing reason: expected reasons group-missing, mfa-required missing "
        "(reasons: authentication-required)",
        "FAIL expected a route: expected deny, got no-route (reasons: none)",
        "0 passed, 4 failed",
    )
    assert report.exit_code == 1


def test_coverage_names_the_routes_and_rules_no_case_exercised(tmp_path: Path, config: Config) -> None:
    # The deny rule is evaluated for every wiki case; allow[1] only when allow[0] fails.
    employee_only = run_cases(config, cases(tmp_path, TESTS[: TESTS.index("- name: contractor")]))
    assert employee_only.lines[-1] == "not exercised: rule wiki allow[1]; route payroll"
    wiki_only = run_cases(config, cases(tmp_path, TESTS[: TESTS.index("- name: payroll")]))
    assert wiki_only.lines[-1] == "not exercised: route payroll"
    everything = run_cases(config, cases(tmp_path, TESTS))
    assert everything.lines[-1] == "coverage: every route and rule exercised"


def test_a_holding_deny_rule_leaves_the_allow_rules_unexercised(tmp_path: Path, config: Config) -> None:
    report = run_cases(config, cases(tmp_path, """
- name: blocked network
  request: {url: "https://wiki.corp.example/", client_ip: 192.0.2.9}
  identity: {email: ada@corp.example}
  expect: {decision: deny, reasons: [denied-by-rule]}
"""))
    assert report.lines[0] == "PASS blocked network"
    assert report.lines[-1] == ("not exercised: rule wiki allow[0]:employees[0]; rule wiki allow[1]; "
                                "route payroll")


def test_explain_shows_every_rule_and_criterion(config: Config) -> None:
    case = case_from_mapping({"name": "explain", "request": {"url": "https://wiki.corp.example/a", "method": "post"},
                              "identity": {"sub": "c-1", "groups": ["contractors"]}}, NOW)
    assert rule_by_rule(config, case.host, case.facts) == [
        f"request: POST wiki.corp.example /a from 127.0.0.1 at {NOW.isoformat()}",
        "route: wiki",
        "decision: deny (email-domain-not-allowed, method-not-allowed)",
        "rules:",
        "  deny[0]: does not hold",
        "    source_cidrs: fails: source-not-allowed",
        "  allow[0]:employees[0]: does not hold",
        "    email_domains: fails: email-domain-not-allowed",
        "  allow[1]: does not hold",
        "    groups: holds",
        "    methods: fails: method-not-allowed",
    ]


def test_explain_without_a_route(config: Config) -> None:
    case = case_from_mapping({"name": "explain", "request": {"url": "https://elsewhere.example/"}}, NOW)
    assert rule_by_rule(config, case.host, case.facts)[1:] == ["route: none", "decision: no-route"]


def test_explain_options_are_validated_like_a_tests_file() -> None:
    with pytest.raises(ConfigError, match=r"request\.time: the time needs a zone"):
        case_from_mapping({"name": "explain", "request": {"url": "https://a.example/", "time": "2024-01-01T10:00"}},
                          NOW)


def test_diff_lists_the_cases_whose_decision_changes(tmp_path: Path, config: Config) -> None:
    stricter = load_text(CONFIG.replace("- employees\n", "- {email_domains: [corp.example], mfa: true}\n"))
    assert diff_cases(config, config, cases(tmp_path, TESTS)) == ["no change"]
    assert diff_cases(config, stricter, cases(tmp_path, TESTS)) == [
        "employee reads the wiki: route wiki: allow -> step-up (mfa-required)",
        "contractor cannot edit: route wiki: deny (email-domain-not-allowed, method-not-allowed) -> "
        "deny (email-domain-not-allowed, mfa-required, method-not-allowed)",
    ]


def test_the_example_tests_pass_against_the_example_config(capsys: pytest.CaptureFixture[str]) -> None:
    config = str(REPO / "config" / "example.yaml")
    tests = str(REPO / "config" / "policy-tests.example.yaml")
    assert main(["policy", "test", "-c", config, tests]) == 0
    output = capsys.readouterr().out.splitlines()
    assert output[-2].endswith(" passed, 0 failed")
    assert load(config).routes  # the example config itself is valid


def test_cli_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    tests = tmp_path / "tests.yaml"
    tests.write_text(TESTS)
    assert main(["policy", "test", "-c", str(config), str(tests)]) == 0
    assert main(["policy", "explain", "-c", str(config), "--url", "https://payroll.corp.example/",
                 "--sub", "p-1", "--group", "payroll-admin", "--mfa", "--auth-age", "5m", "--device-managed"]) == 0
    assert "decision: allow by allow[0]" in capsys.readouterr().out
    assert main(["policy", "diff", "-c", str(config), "-c", str(config), str(tests)]) == 0
    assert capsys.readouterr().out == "no change\n"
    assert main(["policy", "diff", "-c", str(config), str(tests)]) == 2
    assert main(["policy", "test", "-c", str(tmp_path / "missing.yaml"), str(tests)]) == 2
    assert main(["policy", "explain", "-c", str(config), "--url", "nowhere"]) == 2
    assert "request.url" in capsys.readouterr().err

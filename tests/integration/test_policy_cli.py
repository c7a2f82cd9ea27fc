"""``ztproxy policy test`` as CI runs it: a real process, its output lines and exit codes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.integration

CONFIG = """
server: {public_url: "https://login.corp.example"}
identity_providers: [{name: corp, issuer: "https://idp.corp.example", client_id: ztproxy, client_secret: s3cret}]
sessions: {cookie_domain: corp.example}
routes:
  - name: docs
    host: docs.corp.example
    upstream: http://127.0.0.1:9
    allow:
      - {public: true, methods: [GET, HEAD]}
  - name: admin
    host: admin.corp.example
    upstream: http://127.0.0.1:9
    allow:
      - {groups: [ops], mfa: true}
"""

PASSING = """
- name: anyone reads the docs
  request: {url: "https://docs.corp.example/guide"}
  expect: {decision: allow, route: docs, reasons: [public]}
- name: ops with mfa administer
  request: {url: "https://admin.corp.example/", time: "2024-05-06T10:00:00Z"}
  identity: {sub: u-1, groups: [ops], mfa: true}
  expect: {decision: allow, route: admin}
"""

FAILING = """
- name: docs are read-only
  request: {method: POST, url: "https://docs.corp.example/guide"}
  expect: {decision: allow}
"""


def policy(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "ztproxy", "policy", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=60)


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "config.yaml").write_text(CONFIG)
    (tmp_path / "pass.yaml").write_text(PASSING)
    (tmp_path / "fail.yaml").write_text(FAILING)
    (tmp_path / "bad.yaml").write_text("- name: x\n  request: {url: nowhere}\n  expect: {decision: allow}\n")
    return tmp_path


def test_passing_cases_exit_0(files: Path) -> None:
    result = policy("test", "-c", "config.yaml", "pass.yaml", cwd=files)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "PASS anyone reads the docs",
        "PASS ops with mfa administer",
        "2 passed, 0 failed",
        "coverage: every route and rule exercised",
    ]


def test_a_failing_case_exits_1(files: Path) -> None:
    result = policy("test", "-c", "config.yaml", "fail.yaml", cwd=files)
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        "FAIL docs are read-only: expected allow, got deny (reasons: method-not-allowed)",
        "0 passed, 1 failed",
        "not exercised: route admin",
    ]


def test_unusable_input_exits_2_without_a_traceback(files: Path) -> None:
    bad = policy("test", "-c", "config.yaml", "bad.yaml", cwd=files)
    assert bad.returncode == 2
    assert 'line 2: case "x", request.url: expected an absolute http(s) URL' in bad.stderr
    missing = policy("test", "-c", "missing.yaml", "pass.yaml", cwd=files)
    assert missing.returncode == 2
    assert "file not found" in missing.stderr
    assert "Traceback" not in bad.stderr + missing.stderr


def test_diff_and_explain_are_reports(files: Path) -> None:
    (files / "new.yaml").write_text(CONFIG.replace("methods: [GET, HEAD]", "methods: [GET, HEAD, POST]"))
    diff = policy("diff", "-c", "config.yaml", "-c", "new.yaml", "fail.yaml", cwd=files)
    assert diff.returncode == 0, diff.stderr
    assert diff.stdout.splitlines() == ["docs are read-only: route docs: deny -> allow (public, methods)"]
    explain = policy("explain", "-c", "config.yaml", "--url", "https://admin.corp.example/", "--sub", "u-1",
                     "--group", "ops", cwd=files)
    assert explain.returncode == 0, explain.stderr
    assert "decision: step-up by allow[0] (mfa-required)" in explain.stdout.splitlines()


RISKY = CONFIG + """
  - {name: wiki, host: wiki.corp.example, upstream: "http://127.0.0.1:9", allow: [{groups: [ops], max_risk: low}]}
"""

RISK_CASES = """
- name: from the network the session signed in on
  request: {url: "https://wiki.corp.example/", client_ip: 10.0.1.7}
  identity: {sub: u-1, groups: [ops]}
  session: {network: 10.0.1.200}
  expect: {decision: allow, route: wiki}
- name: a moved session is medium risk, too much for the wiki
  request: {url: "https://wiki.corp.example/", client_ip: 10.0.2.7}
  identity: {sub: u-1, groups: [ops]}
  session: {network: 10.0.1.0/24}
  expect: {decision: deny, reasons: [risk-too-high]}
- name: a moved session steps up on a route that needs mfa, whatever its mfa
  request: {url: "https://admin.corp.example/", client_ip: 10.0.2.7}
  identity: {sub: u-1, groups: [ops], mfa: true}
  session: {network: 10.0.1.0/24}
  expect: {decision: step-up, reasons: [session-at-risk]}
- name: concurrent use is refused
  request: {url: "https://admin.corp.example/x"}
  identity: {sub: u-1, groups: [ops], mfa: true}
  session: {signals: [concurrent-use]}
  expect: {decision: deny, route: admin, reasons: [session-at-risk]}
- name: anyone reads the docs
  request: {url: "https://docs.corp.example/guide"}
  expect: {decision: allow, route: docs, reasons: [public]}
"""


def test_policy_test_and_explain_take_the_session_context(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text(RISKY)
    (tmp_path / "risk.yaml").write_text(RISK_CASES)
    result = policy("test", "-c", "config.yaml", "risk.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    explain = policy("explain", "-c", "config.yaml", "--url", "https://wiki.corp.example/", "--sub", "u-1",
                     "--group", "ops", "--client-ip", "10.0.2.7", "--network", "10.0.1.0/24",
                     "--user-agent", "curl/8.5.0", "--signed-in-user-agent", "Mozilla/5.0 Firefox/128.0", cwd=tmp_path)
    assert explain.returncode == 0, explain.stderr
    lines = explain.stdout.splitlines()
    assert "risk: high (signals: network-changed -> log, user-agent-changed -> revoke)" in lines
    assert "decision: deny by risk:user-agent-changed (session-at-risk)" in lines
    signal = policy("explain", "-c", "config.yaml", "--url", "https://admin.corp.example/", "--sub", "u-1",
                    "--group", "ops", "--mfa", "--signal", "network-changed", cwd=tmp_path)
    assert "decision: step-up by risk:network-changed (session-at-risk)" in signal.stdout.splitlines()
    bad = policy("explain", "-c", "config.yaml", "--url", "https://admin.corp.example/", "--sub", "u-1",
                 "--signal", "moon-phase", cwd=tmp_path)
    assert bad.returncode == 2 and "unknown signal(s) 'moon-phase'" in bad.stderr

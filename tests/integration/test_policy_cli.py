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

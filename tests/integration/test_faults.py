"""ztproxy weathers the faults of its dependencies: ``bench/faults.py --smoke``, on both networks.

The scenarios (``tests/support/fault_scenarios.py``: Redis killed and frozen, a Sentinel
failover, the IdP down, an upstream that never answers, SIGTERM under load) run a few
seconds each, on plain loopback and again with the IdP, Redis and the upstreams behind an
impaired network (latency, small segments, resets and dropped connections). The script
prints one verdict line per fault and exits 1 on any request wrongly allowed, failed, hung
or stranded, or a failed check; this test runs it in a process of its own, bounded, and
reads both. The longer form (``bench/faults.py`` without ``--smoke``) is the benchmark.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.support.fault_scenarios import OWN_LAB_SCENARIOS, SHARED_WORLD_SCENARIOS

pytestmark = pytest.mark.integration

SMOKE_BOUND = 600.0  # seconds: under three minutes on a quiet 2-core machine, generous for a busy one
FAULTS = len(SHARED_WORLD_SCENARIOS) + len(OWN_LAB_SCENARIOS)


@pytest.mark.timeout(SMOKE_BOUND + 60)
def test_every_fault_is_weathered_on_a_plain_and_an_impaired_network(tmp_path: Path) -> None:
    # A session of its own: past the bound, the script and everything its labs started (ztproxy,
    # Redis, the IdP) are stopped together, by the group's id.
    process = subprocess.Popen(
        [sys.executable, str(REPO / "bench" / "faults.py"), "--smoke", "--network", "both", "--keep", str(tmp_path)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=SMOKE_BOUND)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"bench/faults.py --smoke ran past {SMOKE_BOUND:g}s:\n{stdout}\n{stderr[-4000:]}")
    print(stdout)
    verdicts = [line for line in stdout.splitlines() if line.startswith(("PASS ", "FAIL "))]
    failing = [line for line in verdicts if line.startswith("FAIL ")]
    assert not failing, "\n".join(failing) + "\n" + stderr[-4000:]
    assert len(verdicts) == 2 * FAULTS, stdout + stderr[-4000:]
    assert sum("(impaired network)" in line for line in verdicts) == FAULTS
    assert process.returncode == 0, stderr[-4000:]

"""The chaos harness, short: ~40 s of the bank workload with one fault of each kind.

Runs ``python -m tests.chaos.run`` as a child (its own private stack, stopped by PID
whatever happens) and asserts that the run is clean: money conserved, every
acknowledged key posted once, the audit passes, every event reached Kafka, and the
API answered 200 within the bound after every fault.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.chaos.faults import FAULT_KINDS

REPO_ROOT = Path(__file__).resolve().parents[2]
RUN_TIMEOUT_SECONDS = 110

pytestmark = [pytest.mark.slow, pytest.mark.timeout(RUN_TIMEOUT_SECONDS + 10)]


def test_short_chaos_run_with_every_fault_kind_is_clean(tmp_path: Path) -> None:
    summary_path = tmp_path / "summary.json"
    env = {
        **os.environ,
        "CHAOS_SECONDS": "40",
        "CHAOS_MIN_FAULTS": "5",
        "CHAOS_CLIENTS": "16",
        "CHAOS_WALLETS": "20",
        "CHAOS_SUMMARY_PATH": str(summary_path),
    }
    done = subprocess.run(
        [sys.executable, "-m", "tests.chaos.run"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_SECONDS,
    )  # fmt: skip
    output = done.stdout[-6000:] + done.stderr[-3000:]
    assert done.returncode == 0, output
    summary = json.loads(summary_path.read_text())
    assert summary["ok"] is True, output
    assert all(verdict["ok"] for verdict in summary["verdicts"].values()), output
    by_kind = summary["faults"]["by_kind"]
    assert summary["faults"]["injected"] >= 5
    assert all(by_kind[kind]["count"] >= 1 for kind in FAULT_KINDS), by_kind
    assert summary["operations"]["acknowledged"] > 0
    assert f"seed {summary['seed']}" in done.stdout

"""``walletd dev`` stops everything it started, whichever way it is asked to stop.

The command runs as a real subprocess with its own run directory and API port; once it
prints the API key, it gets SIGTERM (what a process manager or ``timeout`` sends). Its
API and relay children must be gone afterwards, and so must the servers it started:
nothing of the run may outlive it.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from walletd.adapters.embedded import free_port

pytestmark = pytest.mark.integration

WALLETD = Path(sys.executable).with_name("walletd")
REPO_ROOT = Path(__file__).resolve().parents[2]
READY_DEADLINE_SECONDS = 90.0
STOP_DEADLINE_SECONDS = 40.0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_signal_stops_the_api_the_relay_and_the_servers(signum: signal.Signals) -> None:
    run_dir = REPO_ROOT / ".walletd" / f"test-dev-{signum.name}-{free_port()}"
    port = free_port()
    process = subprocess.Popen(
        [str(WALLETD), "dev", "--run-dir", str(run_dir), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + READY_DEADLINE_SECONDS
        lines: list[str] = []
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("wdk_"):
                break
        assert lines and lines[-1].startswith("wdk_"), "".join(lines)
        started = psutil.Process(process.pid).children(recursive=True)
        commands = [" ".join(child.cmdline()) for child in started]
        assert any(" serve " in f"{command} " for command in commands), commands
        assert any(command.endswith(" relay") for command in commands), commands

        process.send_signal(signum)
        process.wait(STOP_DEADLINE_SECONDS)
        _, alive = psutil.wait_procs(started, timeout=STOP_DEADLINE_SECONDS)
        assert alive == [], [" ".join(p.cmdline()) for p in alive]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()
        for child in psutil.Process().children(recursive=True):
            if child.pid != process.pid and str(run_dir) in " ".join(child.cmdline()):
                child.kill()
        shutil.rmtree(run_dir, ignore_errors=True)

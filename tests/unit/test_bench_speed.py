"""The bench's machine-speed probe: a positive time per probe, summarised per scenario."""

from __future__ import annotations

import time

from bench.speed import SpeedProbe, probe_ms


def test_a_probe_takes_some_cpu_time() -> None:
    assert 0 < probe_ms() < 1000


def test_the_probe_summarises_its_samples() -> None:
    probe = SpeedProbe(interval_seconds=0.01).start()
    time.sleep(0.1)
    summary = probe.stop()
    assert summary["samples"] >= 2
    assert 0 < summary["min_ms"] <= summary["median_ms"] <= summary["max_ms"]

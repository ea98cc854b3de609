"""How fast this machine runs Python at the moment: a fixed piece of work, timed.

On a shared 2-core machine the same work has taken from 4.6 ms to 9 ms of CPU time
from one minute to the next, with nothing of ours running: the host's other tenants
set the pace. :class:`SpeedProbe` times that work four times a second (about 2% of
one core) during a scenario, so each figure in ``latest.json`` carries the machine
speed it was measured at (``machine_speed_ms``: lower is faster). The work runs beside
the scenario's own processes, so the figure includes what they cost the probe too
(two cores shared by everything).
"""

from __future__ import annotations

import statistics
import threading
import time
from typing import Any

PROBE_ITERATIONS = 50_000
PROBE_INTERVAL_SECONDS = 0.25


def probe_ms() -> float:
    """CPU milliseconds this thread needs for the fixed work (dict stores)."""
    started = time.thread_time()
    table: dict[int, int] = {}
    for index in range(PROBE_ITERATIONS):
        table[index & 1023] = index * 2
    return (time.thread_time() - started) * 1000.0


class SpeedProbe:
    """Runs :func:`probe_ms` in a thread until :meth:`stop`; summarises the samples."""

    def __init__(self, interval_seconds: float = PROBE_INTERVAL_SECONDS) -> None:
        self._interval = interval_seconds
        self._samples: list[float] = []
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="speed-probe", daemon=True)

    def start(self) -> SpeedProbe:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stopped.is_set():
            self._samples.append(probe_ms())
            self._stopped.wait(self._interval)

    def stop(self) -> dict[str, Any]:
        self._stopped.set()
        self._thread.join(timeout=5)
        samples = sorted(self._samples) or [probe_ms()]
        return {
            "median_ms": round(statistics.median(samples), 2),
            "min_ms": round(samples[0], 2),
            "max_ms": round(samples[-1], 2),
            "samples": len(samples),
        }

"""Child processes of the benchmark and a sampler of their RSS and CPU.

:class:`Children` starts every child (API, relay, load generator, pgbench) in its own
session, remembers it and its descendants, and stops them strictly by PID: SIGTERM,
then SIGKILL after a timeout. :class:`TreeSampler` reads ``/proc`` every 100 ms in a
thread and reports the peak summed RSS and the CPU seconds of whole process trees.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
SAMPLE_INTERVAL_SECONDS = 0.1
RESCAN_EVERY_TICKS = 5
STOP_TIMEOUT_SECONDS = 10.0
KILL_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class ProcStat:
    """The few fields of ``/proc/<pid>/stat`` the benchmark needs."""

    pid: int
    parent_pid: int
    start_ticks: int
    cpu_seconds: float
    rss_bytes: int


def read_stat(pid: int) -> ProcStat | None:
    """Parse ``/proc/<pid>/stat``; None when the process is gone or a zombie."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    fields = raw.rsplit(b")", 1)[-1].split()
    if len(fields) < 22 or fields[0] == b"Z":
        return None
    return ProcStat(
        pid=pid,
        parent_pid=int(fields[1]),
        start_ticks=int(fields[19]),
        cpu_seconds=(int(fields[11]) + int(fields[12])) / CLOCK_TICKS,
        rss_bytes=int(fields[21]) * PAGE_BYTES,
    )


def read_pss_bytes(pid: int) -> int:
    """Proportional set size (shared pages split between their users); 0 when unreadable."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as rollup:
            for line in rollup:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return 0
    return 0


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent busy since boot (``/proc/stat``: all but idle and iowait)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def all_stats() -> dict[int, ProcStat]:
    stats = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (stat := read_stat(int(name))) is not None:
            stats[stat.pid] = stat
    return stats


def descendants(root_pid: int, stats: Mapping[int, ProcStat] | None = None) -> list[int]:
    """``root_pid`` and every process below it (breadth first)."""
    stats = stats if stats is not None else all_stats()
    children: dict[int, list[int]] = {}
    for stat in stats.values():
        children.setdefault(stat.parent_pid, []).append(stat.pid)
    found, frontier = [], [root_pid] if root_pid in stats else []
    while frontier and len(found) < 10_000:
        pid = frontier.pop(0)
        found.append(pid)
        frontier.extend(children.get(pid, []))
    return found


class TreeSampler:
    """Peak summed RSS (and PSS, for ``pss_trees``) and CPU seconds of process trees."""

    def __init__(self, roots: Mapping[str, int | None], pss_trees: Sequence[str] = ()) -> None:
        self._roots = {name: pid for name, pid in roots.items() if pid is not None}
        self._pss_trees = frozenset(pss_trees)
        self._peak_pss: dict[str, int] = dict.fromkeys(self._roots, 0)
        self._members: dict[str, set[tuple[int, int]]] = {name: set() for name in self._roots}
        self._baseline: dict[tuple[int, int], float] = {}
        self._last: dict[tuple[int, int], float] = {}
        self._peak_rss: dict[str, int] = dict.fromkeys(self._roots, 0)
        self._peak_process_rss: dict[str, int] = dict.fromkeys(self._roots, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)
        self._started = 0.0
        self._machine_busy = 0.0
        self._first = True

    def start(self) -> TreeSampler:
        self._started = time.monotonic()
        self._machine_busy = machine_busy_seconds()
        self._tick(rescan=True)
        self._first = False
        self._thread.start()
        return self

    def stop(self) -> dict[str, dict[str, float | int | None]]:
        """Stop sampling; per tree: peak RSS/PSS (MB), CPU seconds, wall seconds, CPU share.

        ``machine`` is every process of the machine (ours, other users', the kernel's).
        """
        self._stop.set()
        self._thread.join(timeout=5)
        self._tick(rescan=True)
        wall = max(1e-9, time.monotonic() - self._started)
        busy = machine_busy_seconds() - self._machine_busy
        report: dict[str, dict[str, float | int | None]] = {
            "machine": {
                "cpu_seconds": round(busy, 3),
                "wall_seconds": round(wall, 3),
                "cpu_share": round(busy / wall, 3),
            }
        }
        for name, members in self._members.items():
            cpu = sum(self._last[key] - self._baseline[key] for key in members)
            report[name] = {
                "peak_rss_mb": round(self._peak_rss[name] / 1e6, 1),
                "peak_process_rss_mb": round(self._peak_process_rss[name] / 1e6, 1),
                "peak_pss_mb": round(self._peak_pss[name] / 1e6, 1)
                if name in self._pss_trees
                else None,
                "cpu_seconds": round(cpu, 3),
                "wall_seconds": round(wall, 3),
                "cpu_share": round(cpu / wall, 3),
                "processes": len({pid for pid, _ in members}),
            }
        return report

    def _run(self) -> None:
        tick = 0
        while not self._stop.wait(SAMPLE_INTERVAL_SECONDS):
            tick += 1
            self._tick(rescan=tick % RESCAN_EVERY_TICKS == 0)

    def _tick(self, rescan: bool) -> None:
        stats: Mapping[int, ProcStat]
        if rescan:
            stats = all_stats()
            for name, root in self._roots.items():
                for pid in descendants(root, stats):
                    self._members[name].add((pid, stats[pid].start_ticks))
        else:
            pids = {pid for members in self._members.values() for pid, _ in members}
            stats = {pid: s for pid in pids if (s := read_stat(pid)) is not None}
        for name, members in self._members.items():
            rss = pss = 0
            for key in members:
                stat = stats.get(key[0])
                if stat is None or stat.start_ticks != key[1]:
                    continue
                self._baseline.setdefault(key, stat.cpu_seconds if self._first else 0.0)
                self._last[key] = stat.cpu_seconds
                rss += stat.rss_bytes
                self._peak_process_rss[name] = max(self._peak_process_rss[name], stat.rss_bytes)
                if name in self._pss_trees:
                    pss += read_pss_bytes(stat.pid)
            self._peak_rss[name] = max(self._peak_rss[name], rss)
            self._peak_pss[name] = max(self._peak_pss[name], pss)


class Children:
    """The processes this benchmark started; stopped by PID, never by name."""

    def __init__(self) -> None:
        self._processes: list[subprocess.Popen[bytes]] = []
        self._logs: list[IO[bytes]] = []
        self._seen: dict[int, set[tuple[int, int]]] = {}

    def start(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        log_path: Path | None = None,
        **options: Any,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` in its own session; stdout and stderr to ``log_path`` if given."""
        log = log_path.open("ab") if log_path is not None else None
        if log is not None:
            self._logs.append(log)
            options.setdefault("stderr", log if "stdout" in options else subprocess.STDOUT)
            options.setdefault("stdout", log)
        process = subprocess.Popen(
            list(argv), env=dict(env), stdin=subprocess.DEVNULL, start_new_session=True, **options
        )
        self._processes.append(process)
        return process

    def remember_descendants(self, process: subprocess.Popen[bytes]) -> None:
        """Record the descendants of ``process`` now (e.g. uvicorn workers) to stop them later."""
        stats = all_stats()
        found = {(pid, stats[pid].start_ticks) for pid in descendants(process.pid, stats)}
        self._seen.setdefault(process.pid, set()).update(found)

    def stop(self, process: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT_SECONDS) -> None:
        """SIGTERM, wait, SIGKILL; then the same for any recorded descendant still alive."""
        if process.poll() is None:
            self.remember_descendants(process)
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(KILL_TIMEOUT_SECONDS)
        for pid, start_ticks in sorted(self._seen.pop(process.pid, set())):
            if pid != process.pid:
                _stop_by_pid(pid, start_ticks, timeout)
        if process in self._processes:
            self._processes.remove(process)

    def stop_all(self) -> None:
        for process in reversed(list(self._processes)):
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                self.stop(process)
        for log in self._logs:
            log.close()
        self._logs.clear()


def _stop_by_pid(pid: int, start_ticks: int, timeout: float) -> None:
    """Stop a process that is not our direct child, if it is still that very process."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, KILL_TIMEOUT_SECONDS)):
        stat = read_stat(pid)
        if stat is None or stat.start_ticks != start_ticks:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            stat = read_stat(pid)
            if stat is None or stat.start_ticks != start_ticks:
                return
            time.sleep(0.05)

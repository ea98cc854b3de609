"""Where an API worker's CPU goes: py-spy samples one worker during an extra uniform run.

The run is repeated for the profile only and yields no figure (py-spy costs CPU of its
own on a small machine). py-spy is taken from ``PATH``, else run by ``uvx py-spy`` or
``uv tool run py-spy``, never installed into the project's venv; without it the
section is skipped. Samples are summed by package (self time) and by function.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.processes import Children, all_stats, descendants

RATE_PER_SECOND = 100
START_DELAY_SECONDS = 2.0
TOP_FUNCTIONS = 15
_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>.*?)(?::\d+)?\)$")
# Leaves where a thread waits rather than works (py-spy's idle filter lets a few through).
WAIT_LEAVES = frozenset(
    {"Condition.wait", "Event.wait", "Queue.get", "EpollSelector.select", "Connection._recv"}
)
# With uvloop the loop's own C code (epoll, transports) has no Python frame below this.
EVENT_LOOP_LEAF = "Runner.run"


def py_spy_command() -> list[str] | None:
    """How to run py-spy here, or None."""
    on_path = shutil.which("py-spy")
    if on_path is not None:
        return [on_path]
    for runner in (["uvx", "py-spy"], ["uv", "tool", "run", "py-spy"]):
        if shutil.which(runner[0]) is None:
            continue
        try:
            done = subprocess.run(
                [*runner, "--version"], capture_output=True, timeout=180, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if done.returncode == 0:
            return runner
    return None


def busiest_worker(api_pid: int) -> int | None:
    """The API process that has used the most CPU: a uvicorn worker, or the API itself
    when it serves alone (``--workers 1`` has no worker processes)."""
    stats = all_stats()
    if api_pid not in stats:
        return None
    workers = [pid for pid in descendants(api_pid, stats) if pid != api_pid] or [api_pid]
    return max(workers, key=lambda pid: stats[pid].cpu_seconds)


def package_of(path: str) -> str:
    """``walletd.adapters`` for our code, the top-level module name for anything else.

    py-spy prints paths relative to ``sys.path`` (``uvicorn/server.py``, ``threading.py``).
    """
    parts = path.replace("\\", "/").split("site-packages/")[-1].split("/")
    top = parts[0].removesuffix(".py")
    if top == "walletd":
        return "walletd." + parts[1].removesuffix(".py") if len(parts) > 2 else "walletd"
    if top in sys.stdlib_module_names:
        return f"{top} (stdlib)"
    return top or "other"


def summarize(raw: str) -> dict[str, Any]:
    """Self samples by package and function; inclusive by package and walletd function."""
    by_package: Counter[str] = Counter()
    self_by_function: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    inclusive_packages: Counter[str] = Counter()
    total = waiting = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_label(frame) for frame in stack.split(";")]
        leaf_function, leaf_package = frames[-1]
        leaf_name = leaf_function.split(" (", 1)[0]
        if leaf_name in WAIT_LEAVES:
            waiting += count
            continue
        if leaf_name == EVENT_LOOP_LEAF:
            leaf_package = "event loop C code (uvloop; includes idle)"
        total += count
        by_package[leaf_package] += count
        self_by_function[leaf_function] += count
        for function in {function for function, package in frames if package.startswith("walletd")}:
            inclusive[function] += count
        for package in {package for _, package in frames}:
            inclusive_packages[package] += count

    def share(counter: Counter[str], top: int) -> list[dict[str, Any]]:
        return [
            {"name": name, "share": round(n / total, 4)} for name, n in counter.most_common(top)
        ]

    if total == 0:
        return {"samples": 0, "waiting_samples_dropped": waiting}
    return {
        "samples": total,
        "waiting_samples_dropped": waiting,
        "self_by_package": share(by_package, 25),
        "self_by_function": share(self_by_function, TOP_FUNCTIONS),
        "inclusive_by_package": share(inclusive_packages, 25),
        "inclusive_walletd_functions": share(inclusive, TOP_FUNCTIONS),
    }


def _label(frame: str) -> tuple[str, str]:
    match = _FRAME.match(frame)
    if match is None:
        return frame, "other"
    path = match.group("file")
    package = package_of(path)
    return f"{match.group('function')} ({package}:{Path(path).name})", package


def profile_worker(
    children: Children,
    api_pid: int,
    seconds: int,
    run_dir: Path,
    load: Callable[[], dict[str, Any]],
) -> dict[str, Any]:
    """Run ``load`` in a thread and py-spy one worker for ``seconds`` in the middle of it."""
    command = py_spy_command()
    if command is None:
        return {"skipped": "py-spy is not available (PATH, uvx, uv tool run)"}
    outcome: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: outcome.update(load=load()), daemon=True)
    thread.start()
    time.sleep(START_DELAY_SECONDS)
    worker = busiest_worker(api_pid)
    if worker is None:
        thread.join()
        return {"skipped": "no API worker process found"}
    output = run_dir / "py-spy-worker.txt"
    argv = [*command, "record", "--pid", str(worker), "--duration", str(seconds)]
    argv += ["--rate", str(RATE_PER_SECOND), "--format", "raw", "--output", str(output)]
    process = children.start(argv, os.environ, run_dir / "logs" / "py-spy.log")
    try:
        process.wait(timeout=seconds + 120)
    finally:
        children.stop(process)
        thread.join(timeout=600)
    if process.returncode != 0 or not output.exists():
        return {"skipped": f"py-spy failed with code {process.returncode} (see logs/py-spy.log)"}
    summary = summarize(output.read_text(errors="replace"))
    summary.update(worker_pid=worker, command=" ".join(command), seconds=seconds)
    return summary

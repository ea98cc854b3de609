"""Child processes of a chaos run: ``walletd serve`` (uvicorn master and workers), the relay.

Each child starts in its own session, appends its output to a log under the run
directory, and is stopped strictly by PID, descendants included: SIGTERM, then
SIGKILL after a timeout. Nothing is ever signalled by name.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

import httpx
import psutil

STOP_TIMEOUT_SECONDS = 10.0
KILL_TIMEOUT_SECONDS = 5.0
READY_TIMEOUT_SECONDS = 45.0
CLI_TIMEOUT_SECONDS = 120.0
# uvicorn starts workers with multiprocessing "spawn"; the resource tracker is not a worker.
WORKER_MARKER = "spawn_main"


def walletd_command() -> list[str]:
    """The ``walletd`` console script of this interpreter's environment, else ``-m``."""
    script = Path(sys.executable).with_name("walletd")
    if os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "walletd.entrypoints.cli"]


def run_cli(
    arguments: Sequence[str], env: Mapping[str, str], timeout_seconds: float = CLI_TIMEOUT_SECONDS
) -> subprocess.CompletedProcess[str]:
    """Run one ``walletd`` command to completion and capture its output."""
    return subprocess.run(
        [*walletd_command(), *arguments],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout_seconds,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def _stop_processes(processes: Sequence[psutil.Process], sig: int) -> None:
    """Send ``sig`` to each process, wait, SIGKILL the survivors (all by PID)."""
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(sig)
    _, alive = psutil.wait_procs(list(processes), timeout=STOP_TIMEOUT_SECONDS)
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(alive, timeout=KILL_TIMEOUT_SECONDS)


class Child:
    """One ``walletd`` child process and its log."""

    def __init__(
        self, name: str, arguments: Sequence[str], env: Mapping[str, str], log_path: Path
    ) -> None:
        self.name = name
        self.arguments = list(arguments)
        self.env = dict(env)
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        process = self.process
        return process.pid if process is not None and process.poll() is None else None

    def start(self) -> None:
        assert self.process is None or self.process.poll() is not None, "already running"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._close_log()
        self._log = self.log_path.open("ab")
        stamp = time.strftime("%H:%M:%S")
        self._log.write(f"--- chaos: starting {self.name} at {stamp}\n".encode())
        self._log.flush()
        self.process = subprocess.Popen(
            [*walletd_command(), *self.arguments],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def descendants(self) -> list[psutil.Process]:
        """Every live process below this child (workers, trackers), by PID and start time."""
        pid = self.pid
        if pid is None:
            return []
        try:
            return list(psutil.Process(pid).children(recursive=True))
        except psutil.NoSuchProcess:
            return []

    def kill9(self) -> None:
        """SIGKILL this child only (no clean-up at all) and reap it."""
        process = self.process
        if process is not None and process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(KILL_TIMEOUT_SECONDS)

    def stop(self) -> None:
        """SIGTERM the child, then its leftover descendants; SIGKILL whatever outlives that."""
        process = self.process
        below = self.descendants()
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(KILL_TIMEOUT_SECONDS)
        leftovers = [p for p in below if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        if leftovers:
            _stop_processes(leftovers, signal.SIGTERM)
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


class ApiServer(Child):
    """``walletd serve --workers N`` on a loopback port."""

    def __init__(self, port: int, workers: int, env: Mapping[str, str], log_path: Path) -> None:
        arguments = ["serve", "--host", "127.0.0.1", "--port", str(port)]
        super().__init__("api", [*arguments, "--workers", str(workers)], env, log_path)
        self.port = port
        self.workers = workers
        self.url = f"http://127.0.0.1:{port}"

    def worker_pids(self) -> list[int]:
        """PIDs of the live uvicorn workers (direct children started by spawn)."""
        pid = self.pid
        if pid is None:
            return []
        found = []
        with contextlib.suppress(psutil.NoSuchProcess):
            for child in psutil.Process(pid).children():
                with contextlib.suppress(psutil.NoSuchProcess, psutil.ZombieProcess):
                    alive = child.status() != psutil.STATUS_ZOMBIE
                    if alive and any(WORKER_MARKER in part for part in child.cmdline()):
                        found.append(child.pid)
        return sorted(found)

    def wait_ready(self, timeout_seconds: float = READY_TIMEOUT_SECONDS) -> None:
        """Block until ``/readyz`` answers 200 and every worker is up; raise otherwise."""
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(f"walletd serve exited during start; see {self.log_path}")
            with contextlib.suppress(httpx.HTTPError):
                ready = httpx.get(f"{self.url}/readyz", timeout=1.0).status_code == 200
                if ready and len(self.worker_pids()) >= self.workers:
                    return
            time.sleep(0.2)
        raise RuntimeError(
            f"walletd serve not ready in {timeout_seconds:.0f} s; see {self.log_path}"
        )

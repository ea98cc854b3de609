"""``walletd serve`` as a real subprocess on a free loopback port, for tests over a socket.

``serving`` starts it against a database with only the ``WALLETD_*`` settings it is
given (none inherited from the test's environment), waits for ``/healthz``, and kills
the process it started on the way out.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

WALLETD = Path(sys.executable).with_name("walletd")
STARTUP_DEADLINE_SECONDS = 30.0
HOST = "127.0.0.1"


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
    return port


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


def wait_until_healthy(server: Server) -> None:
    deadline = time.monotonic() + STARTUP_DEADLINE_SECONDS
    while time.monotonic() < deadline:
        assert server.process.poll() is None, f"walletd serve exited early:\n{server.log()}"
        try:
            if httpx.get(f"{server.base_url}/healthz", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    pytest.fail(f"walletd serve did not answer /healthz in time:\n{server.log()}")


@contextmanager
def serving(
    database_url: str, log_path: Path, settings: Mapping[str, str] | None = None
) -> Iterator[Server]:
    """A healthy ``walletd serve`` on ``database_url``, with extra ``WALLETD_*`` settings."""
    port = free_loopback_port()
    env = {name: value for name, value in os.environ.items() if not name.startswith("WALLETD_")}
    env["WALLETD_DATABASE_URL"] = database_url
    env.update(settings or {})
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(WALLETD), "serve", "--host", HOST, "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    running = Server(process, port, log_path)
    try:
        wait_until_healthy(running)
        yield running
    finally:
        if process.poll() is None:
            process.kill()  # only the process started here, by its handle
            process.wait(timeout=10)

"""``walletd dev``: the whole engine on private embedded servers, for a laptop or a demo.

Starts PostgreSQL, a Redis-compatible server and a Kafka-compatible broker under the
run directory (``.walletd/`` by default), migrates, creates a ``dev`` tenant key, and
runs the API and the relay as child processes. Ctrl-C, SIGTERM or SIGHUP stops everything,
by PID.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from walletd.adapters.embedded import EmbeddedServiceError, resolve_services
from walletd.adapters.migrations import upgrade
from walletd.errors import Unavailable
from walletd.service_layer.tenants import NewKey

READY_TIMEOUT_SECONDS = 45.0
STOP_TIMEOUT_SECONDS = 10.0


def _walletd_command() -> list[str]:
    return [sys.executable, "-m", "walletd.entrypoints.cli"]


async def _dev_key(database_url: str) -> NewKey:
    import asyncpg

    from walletd.service_layer.tenants import create_api_key

    connection = await asyncpg.connect(database_url)
    try:
        return await create_api_key(connection, "dev", ["read", "write", "admin"])
    finally:
        await connection.close()


def _wait_ready(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise Unavailable(f"the API exited during start (code {process.returncode})")
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=1) as response:  # noqa: S310
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise Unavailable(f"the API did not become ready within {READY_TIMEOUT_SECONDS:.0f} s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(STOP_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def run_dev(run_dir: str, port: int) -> None:
    """Run until Ctrl-C, SIGTERM or SIGHUP; every child and server is stopped on the way out."""
    root = Path(run_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    print(f"starting PostgreSQL, Redis and Kafka under {root} …", flush=True)
    try:
        endpoints, stack = resolve_services(root)
    except EmbeddedServiceError as error:
        raise Unavailable(str(error).splitlines()[0]) from error
    children: list[subprocess.Popen[bytes]] = []
    # SIGTERM and SIGHUP end the run the way Ctrl-C does, so that the API and the relay
    # are stopped too, not only the servers (which the embedded stack stops by itself).
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)
    try:
        upgrade(endpoints.database_url)
        key = asyncio.run(_dev_key(endpoints.database_url))
        env = {**os.environ, **endpoints.as_env(), "WALLETD_PORT": str(port)}
        logs = root / "logs"
        logs.mkdir(exist_ok=True)
        api_log = (logs / "api.log").open("ab")
        relay_log = (logs / "relay.log").open("ab")
        children.append(
            subprocess.Popen(
                [*_walletd_command(), "serve", "--port", str(port)],
                env=env,
                stdout=api_log,
                stderr=api_log,
            )
        )
        children.append(
            subprocess.Popen(
                [*_walletd_command(), "relay"], env=env, stdout=relay_log, stderr=relay_log
            )
        )
        url = f"http://127.0.0.1:{port}"
        _wait_ready(url, children[0])
        print(f"walletd is running at {url}  (logs in {logs})")
        print("Press Ctrl-C to stop. API key (tenant 'dev', scopes read,write,admin):")
        print(key.secret, flush=True)
        _supervise(children)
    except KeyboardInterrupt:
        print("\nstopping …", flush=True)
    finally:
        for child in reversed(children):
            _stop(child)
        stack.stop()


def _supervise(children: list[subprocess.Popen[bytes]]) -> None:
    """Block until Ctrl-C; say so if a child dies."""
    reported: set[int] = set()
    while True:
        for child in children:
            if child.poll() is not None and child.pid not in reported:
                reported.add(child.pid)
                command = " ".join(str(part) for part in child.args)  # type: ignore[union-attr]
                print(
                    f"warning: {command} exited with code {child.returncode}; see the logs",
                    file=sys.stderr,
                    flush=True,
                )
        time.sleep(0.5)

"""Session fixtures that run walletd's backing services privately.

``stack`` starts PostgreSQL, a Redis-compatible server and a Kafka-compatible broker
(see :mod:`walletd.adapters.embedded`) under ``<repo>/.walletd/test-<pid>/`` once per
test session, honouring ``WALLETD_DATABASE_URL`` / ``WALLETD_REDIS_URL`` /
``WALLETD_KAFKA_BOOTSTRAP`` (an external service is used instead of a private one),
and always stops what it started.  The run directory is removed after a clean stop
unless ``WALLETD_KEEP_TEST_DIRS`` is set.  Run directories of earlier sessions whose
pytest process is gone are reaped (their servers stopped by PID) and removed.

Load with ``pytest_plugins = ["tests.support.services"]``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from walletd.adapters.embedded import (
    EmbeddedServiceError,
    EmbeddedStack,
    ServiceEndpoints,
    reap_stale,
    resolve_services,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
STATE_DIR = REPO_ROOT / ".walletd"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _reap_abandoned_runs() -> None:
    """Stop and remove servers of earlier test sessions that died without cleaning up."""
    for run_dir in STATE_DIR.glob("test-*"):
        pid = run_dir.name.removeprefix("test-")
        if not pid.isdigit() or _pid_alive(int(pid)):
            continue
        try:
            reap_stale(run_dir)
        except EmbeddedServiceError:
            continue  # still in use after all: leave it alone
        shutil.rmtree(run_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def stack() -> Iterator[EmbeddedStack]:
    """The session's private services (fast mode: fsync off, commits still synchronous)."""
    _reap_abandoned_runs()
    run_dir = STATE_DIR / f"test-{os.getpid()}"
    _, services = resolve_services(run_dir, fast=True)
    try:
        yield services
    finally:
        services.stop()
    if not os.environ.get("WALLETD_KEEP_TEST_DIRS"):
        shutil.rmtree(run_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def endpoints(stack: EmbeddedStack) -> ServiceEndpoints:
    """Where the session's PostgreSQL, Redis and Kafka are."""
    return stack.endpoints

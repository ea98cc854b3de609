"""Prometheus gauges of ``walletd audit --every``: is the ledger sound, and since when.

They live in their own registry, served by a small HTTP server on 127.0.0.1, so that
an audit job exposes only what it measures (alert on ``walletd_audit_ok == 0`` and
on a stale ``walletd_audit_last_run_timestamp_seconds``).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

REGISTRY = CollectorRegistry(auto_describe=True)

AUDIT_VIOLATIONS = Gauge(
    "walletd_audit_violations",
    "Violations found by the last completed audit (all invariants).",
    registry=REGISTRY,
)
AUDIT_VIOLATIONS_BY_INVARIANT = Gauge(
    "walletd_audit_violations_by_invariant",
    "Violations found by the last completed audit, per invariant (docs/audit.md).",
    ["invariant"],
    registry=REGISTRY,
)
AUDIT_LAST_RUN_TIMESTAMP_SECONDS = Gauge(
    "walletd_audit_last_run_timestamp_seconds",
    "Unix time at which the last completed audit finished.",
    registry=REGISTRY,
)
AUDIT_DURATION_SECONDS = Gauge(
    "walletd_audit_duration_seconds",
    "How long the last completed audit took.",
    registry=REGISTRY,
)
AUDIT_OK = Gauge(
    "walletd_audit_ok",
    "1 when the last completed audit found every invariant holding, else 0.",
    registry=REGISTRY,
)
AUDIT_FAILURES = Counter(
    "walletd_audit_failures",
    "Audit runs that could not complete (database unreachable or failing).",
    registry=REGISTRY,
)

INVARIANTS = tuple(range(1, 8))


def record_run(
    violations_by_invariant: dict[int, int], finished_at_seconds: float, duration_seconds: float
) -> None:
    """Publish the outcome of one completed audit."""
    assert duration_seconds >= 0
    for invariant in INVARIANTS:
        AUDIT_VIOLATIONS_BY_INVARIANT.labels(invariant=str(invariant)).set(
            violations_by_invariant.get(invariant, 0)
        )
    AUDIT_VIOLATIONS.set(sum(violations_by_invariant.values()))
    AUDIT_LAST_RUN_TIMESTAMP_SECONDS.set(finished_at_seconds)
    AUDIT_DURATION_SECONDS.set(duration_seconds)
    AUDIT_OK.set(0 if any(violations_by_invariant.values()) else 1)


def record_failure() -> None:
    """An audit that could not run: the last good values stay, the timestamp goes stale."""
    AUDIT_FAILURES.inc()


def serve(port: int, address: str = "127.0.0.1") -> None:
    """Serve the audit registry on ``address:port`` from a daemon thread."""
    assert 1 <= port <= 65535
    start_http_server(port, addr=address, registry=REGISTRY)

"""Prometheus metrics of the transactional outbox and its Kafka relay.

The metric objects live here, in the default registry, so that the relay and the
API process report the same names; :func:`refresh_outbox_gauges` reads the outbox
depth and the age of its oldest unpublished row from PostgreSQL (bounded queries).
"""

from __future__ import annotations

import asyncpg
from prometheus_client import Counter, Gauge

# Counting stops here: a backlog this deep is an incident whatever its exact size,
# and the count must stay a cheap, bounded scan of the partial index.
DEPTH_COUNT_LIMIT = 1_000_000

OUTBOX_DEPTH = Gauge(
    "walletd_outbox_depth",
    f"Unpublished outbox rows (counted up to {DEPTH_COUNT_LIMIT}).",
)
OUTBOX_OLDEST_AGE_SECONDS = Gauge(
    "walletd_outbox_oldest_unpublished_age_seconds",
    "Age of the oldest unpublished outbox row, 0 when the outbox is drained.",
)
EVENTS_PUBLISHED = Counter(
    "walletd_relay_events_published",
    "Outbox events acknowledged by Kafka and marked published by this process.",
)
PUBLISH_FAILURES = Counter(
    "walletd_relay_publish_failures",
    "Relay batches that were not fully acknowledged (broker down, timeout, error).",
)
RELAY_LEADER = Gauge(
    "walletd_relay_leader",
    "1 while this relay holds the publisher lock, else 0.",
)

OUTBOX_STATE = """
SELECT
    (SELECT count(*) FROM (
        SELECT 1 FROM outbox WHERE published_at IS NULL LIMIT $1
    ) AS pending) AS depth,
    (SELECT extract(epoch FROM clock_timestamp() - created_at)::float8
     FROM outbox WHERE published_at IS NULL ORDER BY id LIMIT 1) AS oldest_age_seconds
"""


async def refresh_outbox_gauges(
    connection: asyncpg.Connection, *, timeout_seconds: float = 5.0
) -> tuple[int, float]:
    """Read the outbox depth and oldest unpublished age into the gauges; return both."""
    row = await connection.fetchrow(OUTBOX_STATE, DEPTH_COUNT_LIMIT, timeout=timeout_seconds)
    assert row is not None
    depth = int(row["depth"])
    oldest_age_seconds = max(0.0, float(row["oldest_age_seconds"] or 0.0))
    assert 0 <= depth <= DEPTH_COUNT_LIMIT
    OUTBOX_DEPTH.set(depth)
    OUTBOX_OLDEST_AGE_SECONDS.set(oldest_age_seconds)
    return depth, oldest_age_seconds

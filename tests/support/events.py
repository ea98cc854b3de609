"""The CloudEvents a tenant's outbox rows publish, in publication order (rows expanded)."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg

from walletd.service_layer.relay import OutboxRow


async def published_events(connection: asyncpg.Connection, tenant_id: UUID) -> list[dict[str, Any]]:
    """Every event the relay publishes for the tenant's rows, as it publishes them."""
    rows = await connection.fetch(
        "SELECT id, event_id, message_key, event_type, payload FROM outbox"
        " WHERE tenant_id = $1 ORDER BY id",
        tenant_id,
    )
    return [event for row in rows for _, event in OutboxRow.from_record(row).events]

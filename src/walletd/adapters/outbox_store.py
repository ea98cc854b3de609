"""Writing events to the transactional outbox (the relay drains it to Kafka)."""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID

import asyncpg

from walletd import jsontext
from walletd.domain.events import OutboxEvent

INSERT_EVENTS = """
INSERT INTO outbox (event_id, tenant_id, message_key, event_type, payload)
SELECT e.event_id, $1, e.message_key, e.event_type, e.payload::jsonb
FROM unnest($2::uuid[], $3::text[], $4::text[], $5::text[]) WITH ORDINALITY
     AS e(event_id, message_key, event_type, payload, position)
ORDER BY e.position
"""


async def add_events(
    connection: asyncpg.Connection, tenant_id: UUID, events: Sequence[OutboxEvent]
) -> None:
    """Queue ``events`` in the caller's transaction, in order."""
    if not events:
        return
    await connection.execute(
        INSERT_EVENTS,
        tenant_id,
        [event.event_id for event in events],
        [event.message_key for event in events],
        [event.event_type for event in events],
        [jsontext.dumps_text(event.payload) for event in events],
    )

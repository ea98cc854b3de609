"""Reading holds: one hold, and the holds due to expire.

Holds are created, captured, voided and expired only by the engine, whose statements
live in :mod:`walletd.adapters.ledger_store` with the rest of the SQL that moves money.
"""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

import asyncpg

from walletd.domain.records import Hold

HOLD_COLUMNS = """
    id, tenant_id, wallet_id, amount, currency, status, captured_amount, transaction_id,
    expires_at, created_at
"""

SELECT_HOLD = f"""
SELECT {HOLD_COLUMNS} FROM holds WHERE tenant_id = $1 AND id = $2
"""

# Pending holds past their expiry, soonest first; served by ``holds_expiring``.
DUE_HOLDS = """
SELECT tenant_id, id FROM holds
WHERE status = 'pending' AND expires_at <= $1
ORDER BY expires_at, id
LIMIT $2
"""


def hold_record(row: asyncpg.Record) -> Hold:
    return Hold(
        id=row["id"],
        tenant_id=row["tenant_id"],
        wallet_id=row["wallet_id"],
        amount=row["amount"],
        currency=row["currency"],
        status=row["status"],
        captured_amount=row["captured_amount"],
        transaction_id=row["transaction_id"],
        expires_at=row["expires_at"],
        created_at=row["created_at"],
    )


async def get_hold(connection: asyncpg.Connection, tenant_id: UUID, hold_id: UUID) -> Hold | None:
    row = await connection.fetchrow(SELECT_HOLD, tenant_id, hold_id)
    return hold_record(row) if row else None


async def due_holds(
    connection: asyncpg.Connection, now: datetime, limit: int
) -> list[tuple[UUID, UUID]]:
    """(tenant id, hold id) of up to ``limit`` pending holds due at ``now``, soonest first."""
    rows = await connection.fetch(DUE_HOLDS, now, limit)
    return [(row["tenant_id"], row["id"]) for row in rows]

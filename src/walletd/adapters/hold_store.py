"""The SQL of holds, as a handful of named statements.

Lock order is the ledger's: a hold's wallet row is locked first (``lock_wallets`` of
:mod:`walletd.adapters.ledger_store`), then the hold row ``FOR UPDATE``. Every status
change is guarded by ``status = 'pending'`` in the statement itself, so a hold can
leave ``pending`` only once whatever the callers do.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from uuid import UUID

import asyncpg

from walletd.domain.records import Hold

HOLD_COLUMNS = """
    id, tenant_id, wallet_id, amount, currency, status, captured_amount, transaction_id,
    expires_at, created_at
"""

INSERT_HOLD = """
INSERT INTO holds (id, tenant_id, wallet_id, amount, currency, status, expires_at, created_at,
                   updated_at)
VALUES ($1, $2, $3, $4, $5, 'pending', $6, $7, $7)
"""

SELECT_HOLD = f"""
SELECT {HOLD_COLUMNS} FROM holds WHERE tenant_id = $1 AND id = $2
"""

# Taken only while the hold's wallet row is locked (see the module docstring).
LOCK_HOLD = SELECT_HOLD + " FOR UPDATE"

# Leaves ``pending`` exactly once: the status guard makes a second finish a no-op.
FINISH_HOLD = """
UPDATE holds
SET status = $3, captured_amount = $4, transaction_id = $5, updated_at = $6
WHERE tenant_id = $1 AND id = $2 AND status = 'pending'
"""

# Wallets that have pending holds past their expiry; served by ``holds_expiring``.
DUE_WALLETS = """
SELECT tenant_id, wallet_id
FROM (SELECT tenant_id, wallet_id, expires_at FROM holds
      WHERE status = 'pending' AND expires_at <= $1
      ORDER BY expires_at
      LIMIT $2) AS due
GROUP BY tenant_id, wallet_id
ORDER BY min(expires_at)
"""

# Run with the wallet row already locked: another expirer that got here first has
# changed the status (rechecked here), and SKIP LOCKED never waits on a hold row.
LOCK_DUE_HOLDS = f"""
SELECT {HOLD_COLUMNS} FROM holds
WHERE tenant_id = $1 AND wallet_id = $2 AND status = 'pending' AND expires_at <= $3
ORDER BY expires_at, id
LIMIT $4
FOR UPDATE SKIP LOCKED
"""

EXPIRE_HOLDS = """
UPDATE holds SET status = 'expired', updated_at = $3
WHERE tenant_id = $1 AND id = ANY($2::uuid[]) AND status = 'pending'
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


async def insert_hold(connection: asyncpg.Connection, hold: Hold) -> None:
    assert hold.status == "pending"
    assert hold.amount > 0
    await connection.execute(
        INSERT_HOLD,
        hold.id,
        hold.tenant_id,
        hold.wallet_id,
        hold.amount,
        hold.currency,
        hold.expires_at,
        hold.created_at,
    )


async def get_hold(
    connection: asyncpg.Connection, tenant_id: UUID, hold_id: UUID, *, lock: bool = False
) -> Hold | None:
    """The tenant's hold; with ``lock`` its row stays locked (its wallet must be locked)."""
    row = await connection.fetchrow(LOCK_HOLD if lock else SELECT_HOLD, tenant_id, hold_id)
    return hold_record(row) if row else None


async def finish_hold(connection: asyncpg.Connection, hold: Hold, at: datetime) -> None:
    """Store ``hold``'s final status; it must still be ``pending`` in the database."""
    assert hold.status != "pending"
    result = await connection.execute(
        FINISH_HOLD,
        hold.tenant_id,
        hold.id,
        hold.status,
        hold.captured_amount,
        hold.transaction_id,
        at,
    )
    assert result == "UPDATE 1", f"hold {hold.id} was no longer pending: {result}"


async def due_wallets(
    connection: asyncpg.Connection, now: datetime, max_holds: int
) -> list[tuple[UUID, UUID]]:
    """(tenant id, wallet id) of wallets among the ``max_holds`` holds due soonest."""
    rows = await connection.fetch(DUE_WALLETS, now, max_holds)
    return [(row["tenant_id"], row["wallet_id"]) for row in rows]


async def lock_due_holds(
    connection: asyncpg.Connection, tenant_id: UUID, wallet_id: UUID, now: datetime, limit: int
) -> list[Hold]:
    """The wallet's pending holds due at ``now`` that nobody else holds; wallet locked."""
    rows = await connection.fetch(LOCK_DUE_HOLDS, tenant_id, wallet_id, now, limit)
    return [hold_record(row) for row in rows]


async def expire_holds(
    connection: asyncpg.Connection, tenant_id: UUID, hold_ids: Sequence[UUID], at: datetime
) -> None:
    result = await connection.execute(EXPIRE_HOLDS, tenant_id, list(hold_ids), at)
    assert result == f"UPDATE {len(hold_ids)}", f"expected {len(hold_ids)} holds, {result}"

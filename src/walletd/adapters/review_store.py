"""SQL of the fraud controls: a tenant's risk rules, recent recipients, the review queue.

A decided review is written by the engine, like every change of a balance
(:func:`walletd.adapters.ledger_store.write_book`).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from walletd.adapters.ledger_queries import TRANSACTION_COLUMNS, transaction_record
from walletd.domain.records import Transaction

SELECT_RULES = "SELECT risk_rules FROM tenants WHERE id = $1"

REPLACE_RULES = """
WITH old AS (SELECT risk_rules FROM tenants WHERE id = $1 FOR UPDATE),
updated AS (
    UPDATE tenants SET risk_rules = $2 WHERE id = $1 RETURNING id
)
SELECT old.risk_rules FROM old, updated
"""

# Every user wallet the payers paid since $3 — transfers and captures to a wallet;
# posted ones through the payer's entries, pending ones through the pending-review
# index — keeping only the $4 most recent recipients per payer: no rule needs more.
RECENT_RECIPIENTS = """
WITH sent AS (
    SELECT e.wallet_id AS payer, t.to_wallet_id AS recipient, e.created_at AS at
    FROM entries e JOIN transactions t ON t.id = e.transaction_id
    WHERE e.wallet_id = ANY($2::uuid[]) AND e.created_at > $3 AND e.amount < 0
      AND t.tenant_id = $1 AND t.type IN ('transfer', 'capture') AND t.to_wallet_id IS NOT NULL
    UNION ALL
    SELECT t.from_wallet_id, t.to_wallet_id, t.created_at
    FROM transactions t
    WHERE t.tenant_id = $1 AND t.status = 'pending_review' AND t.created_at > $3
      AND t.type IN ('transfer', 'capture') AND t.to_wallet_id IS NOT NULL
      AND t.from_wallet_id = ANY($2::uuid[])
),
latest AS (
    SELECT payer, recipient, max(at) AS at FROM sent GROUP BY payer, recipient
),
ranked AS (
    SELECT payer, recipient, at,
           row_number() OVER (PARTITION BY payer ORDER BY at DESC) AS position
    FROM latest
)
SELECT payer, recipient, at FROM ranked WHERE position <= $4
"""

LIST_PENDING = f"""
SELECT {TRANSACTION_COLUMNS} FROM transactions
WHERE tenant_id = $1 AND status = 'pending_review'
  AND ($2::timestamptz IS NULL OR (created_at, id) > ($2, $3))
ORDER BY created_at, id
LIMIT $4
"""


async def load_rules(connection: asyncpg.Connection, tenant_id: UUID) -> Any:
    """The tenant's stored rules as JSON (the caller validates them again)."""
    return await connection.fetchval(SELECT_RULES, tenant_id)


async def replace_rules(
    connection: asyncpg.Connection, tenant_id: UUID, rules: list[dict[str, Any]]
) -> Any:
    """Store ``rules`` (already validated); return the rules they replaced."""
    return await connection.fetchval(REPLACE_RULES, tenant_id, rules)


async def recent_recipients(
    connection: asyncpg.Connection,
    tenant_id: UUID,
    payer_ids: Iterable[UUID],
    since: datetime,
    per_payer: int,
) -> dict[UUID, dict[UUID, datetime]]:
    """payer → {recipient → latest transfer time} since ``since``, ``per_payer`` at most."""
    assert per_payer >= 1
    rows = await connection.fetch(
        RECENT_RECIPIENTS, tenant_id, sorted(set(payer_ids)), since, per_payer
    )
    found: dict[UUID, dict[UUID, datetime]] = {}
    for row in rows:
        found.setdefault(row["payer"], {})[row["recipient"]] = row["at"]
    return found


async def list_pending(
    connection: asyncpg.Connection,
    tenant_id: UUID,
    after: tuple[datetime, UUID] | None,
    limit: int,
) -> list[Transaction]:
    """Pending reviews, oldest first, after the ``(created_at, id)`` cursor."""
    after_time, after_id = after if after else (None, None)
    rows = await connection.fetch(LIST_PENDING, tenant_id, after_time, after_id, limit)
    return [transaction_record(row) for row in rows]

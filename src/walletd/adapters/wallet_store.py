"""SQL for wallets outside of postings: create, read, list, change status, limits."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from walletd.domain.ledger import Limits, WalletStatus
from walletd.domain.records import Wallet

WALLET_COLUMNS = """
    id, tenant_id, currency, owner_id, is_system, status, balance, held_balance,
    overdraft_limit, version, limits, metadata, created_at, updated_at
"""

INSERT_WALLET = f"""
INSERT INTO wallets (id, tenant_id, currency, owner_id, overdraft_limit, metadata, created_at,
                     updated_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $7)
RETURNING {WALLET_COLUMNS}
"""

SELECT_WALLET = f"""
SELECT {WALLET_COLUMNS} FROM wallets WHERE tenant_id = $1 AND id = $2 AND NOT is_system
"""

LOCK_WALLET = SELECT_WALLET + " FOR UPDATE"

LIST_WALLETS = f"""
SELECT {WALLET_COLUMNS} FROM wallets
WHERE tenant_id = $1 AND NOT is_system
  AND ($2::text IS NULL OR owner_id = $2)
  AND ($3::timestamptz IS NULL OR (created_at, id) > ($3, $4))
ORDER BY created_at, id
LIMIT $5
"""

UPDATE_STATUS = f"""
UPDATE wallets SET status = $3, updated_at = greatest(updated_at, $4)
WHERE tenant_id = $1 AND id = $2
RETURNING {WALLET_COLUMNS}
"""

UPDATE_LIMITS = f"""
UPDATE wallets SET limits = $3, updated_at = greatest(updated_at, $4)
WHERE tenant_id = $1 AND id = $2
RETURNING {WALLET_COLUMNS}
"""


def wallet_record(row: asyncpg.Record) -> Wallet:
    return Wallet(
        id=row["id"],
        tenant_id=row["tenant_id"],
        currency=row["currency"],
        owner_id=row["owner_id"],
        is_system=row["is_system"],
        status=WalletStatus(row["status"]),
        balance=row["balance"],
        held_balance=row["held_balance"],
        overdraft_limit=row["overdraft_limit"],
        version=row["version"],
        limits=Limits.from_json(row["limits"]),
        metadata=row["metadata"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


async def insert_wallet(
    connection: asyncpg.Connection,
    *,
    wallet_id: UUID,
    tenant_id: UUID,
    currency: str,
    owner_id: str | None,
    overdraft_limit: int,
    metadata: dict[str, Any],
    at: datetime,
) -> Wallet:
    row = await connection.fetchrow(
        INSERT_WALLET, wallet_id, tenant_id, currency, owner_id, overdraft_limit, metadata, at
    )
    return wallet_record(row)


async def get_wallet(
    connection: asyncpg.Connection, tenant_id: UUID, wallet_id: UUID, *, lock: bool = False
) -> Wallet | None:
    row = await connection.fetchrow(LOCK_WALLET if lock else SELECT_WALLET, tenant_id, wallet_id)
    return wallet_record(row) if row else None


async def list_wallets(
    connection: asyncpg.Connection,
    tenant_id: UUID,
    owner_id: str | None,
    after: tuple[datetime, UUID] | None,
    limit: int,
) -> list[Wallet]:
    after_time, after_id = after if after else (None, None)
    rows = await connection.fetch(LIST_WALLETS, tenant_id, owner_id, after_time, after_id, limit)
    return [wallet_record(row) for row in rows]


async def set_status(
    connection: asyncpg.Connection,
    tenant_id: UUID,
    wallet_id: UUID,
    status: WalletStatus,
    at: datetime,
) -> Wallet:
    row = await connection.fetchrow(UPDATE_STATUS, tenant_id, wallet_id, status.value, at)
    return wallet_record(row)


async def set_limits(
    connection: asyncpg.Connection,
    tenant_id: UUID,
    wallet_id: UUID,
    limits: Limits,
    at: datetime,
) -> Wallet:
    row = await connection.fetchrow(UPDATE_LIMITS, tenant_id, wallet_id, limits.to_json(), at)
    return wallet_record(row)

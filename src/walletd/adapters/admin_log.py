"""The admin audit log: who (key id) did what to which object, before and after."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg

INSERT_ACTION = """
INSERT INTO audit_log (tenant_id, key_id, action, target_type, target_id, before, after)
VALUES ($1, $2, $3, $4, $5, $6, $7)
"""

LIST_ACTIONS = """
SELECT id, key_id, action, target_type, target_id, before, after, created_at
FROM audit_log WHERE tenant_id = $1 AND ($2::bigint IS NULL OR id < $2)
ORDER BY id DESC LIMIT $3
"""


async def record_action(
    connection: asyncpg.Connection,
    *,
    tenant_id: UUID,
    key_id: UUID | None,
    action: str,
    target_type: str,
    target_id: str,
    before: Any,
    after: Any,
) -> None:
    await connection.execute(
        INSERT_ACTION, tenant_id, key_id, action, target_type, target_id, before, after
    )


async def list_actions(
    connection: asyncpg.Connection, tenant_id: UUID, before_id: int | None, limit: int
) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await connection.fetch(LIST_ACTIONS, tenant_id, before_id, limit)
    return rows

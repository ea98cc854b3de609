"""Read-side SQL of the ledger; every query is served by an index.

``entries_by_wallet_time (wallet_id, created_at, wallet_version)`` answers point-in-time
balances and statement ranges; ``entries_one_per_wallet_version`` pages entries.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from uuid import UUID

import asyncpg

from walletd.domain.ledger import Entry
from walletd.domain.records import Transaction

ENTRY_COLUMNS = """
    id, transaction_id, wallet_id, currency, amount, balance_after, wallet_version, hash, created_at
"""

TRANSACTION_COLUMNS = """
    id, tenant_id, type, status, amount, currency, reference, metadata, from_wallet_id,
    to_wallet_id, reverses_transaction_id, hold_id, review_rule, created_at
"""

SELECT_TRANSACTION = f"""
SELECT {TRANSACTION_COLUMNS} FROM transactions WHERE tenant_id = $1 AND id = $2
"""

SELECT_TRANSACTION_ENTRIES = f"""
SELECT {ENTRY_COLUMNS} FROM entries WHERE transaction_id = $1 ORDER BY amount, wallet_id
"""

PAGE_ENTRIES = f"""
SELECT {ENTRY_COLUMNS} FROM entries
WHERE wallet_id = $1 AND wallet_version > $2 AND wallet_version <= $3
ORDER BY wallet_version
LIMIT $4
"""

# One wallet's entries are in the same order by time and by version (posting_time never
# goes back), so a time range is a version range: two index lookups turn one into the other.
FIRST_VERSION_FROM = """
SELECT wallet_version FROM entries
WHERE wallet_id = $1 AND created_at >= $2
ORDER BY created_at, wallet_version
LIMIT 1
"""

BALANCE_AT = """
SELECT balance_after, wallet_version FROM entries
WHERE wallet_id = $1 AND created_at <= $2
ORDER BY created_at DESC, wallet_version DESC
LIMIT 1
"""

WALLET_BALANCE_AT = """
SELECT w.currency, coalesce(e.balance_after, 0) AS balance,
       coalesce(e.wallet_version, 0) AS wallet_version
FROM wallets w
LEFT JOIN LATERAL (
    SELECT balance_after, wallet_version FROM entries
    WHERE wallet_id = w.id AND created_at <= $3
    ORDER BY created_at DESC, wallet_version DESC
    LIMIT 1
) e ON true
WHERE w.tenant_id = $1 AND w.id = $2 AND NOT w.is_system
"""

BALANCE_BEFORE = """
SELECT balance_after, wallet_version FROM entries
WHERE wallet_id = $1 AND created_at < $2
ORDER BY created_at DESC, wallet_version DESC
LIMIT 1
"""

RANGE_TOTALS = """
SELECT coalesce(sum(amount) FILTER (WHERE amount > 0), 0)::numeric AS credits,
       coalesce(-sum(amount) FILTER (WHERE amount < 0), 0)::numeric AS debits
FROM entries
WHERE wallet_id = $1 AND wallet_version > $2 AND wallet_version <= $3
"""

MAX_VERSION = 2**63 - 1


def entry_record(row: asyncpg.Record) -> Entry:
    return Entry(
        id=row["id"],
        transaction_id=row["transaction_id"],
        wallet_id=row["wallet_id"],
        currency=row["currency"],
        amount=row["amount"],
        balance_after=row["balance_after"],
        wallet_version=row["wallet_version"],
        hash=bytes(row["hash"]),
        created_at=row["created_at"],
    )


def transaction_record(row: asyncpg.Record, entries: Sequence[Entry] = ()) -> Transaction:
    return Transaction(
        id=row["id"],
        tenant_id=row["tenant_id"],
        type=row["type"],
        status=row["status"],
        amount=row["amount"],
        currency=row["currency"],
        reference=row["reference"],
        metadata=row["metadata"],
        from_wallet_id=row["from_wallet_id"],
        to_wallet_id=row["to_wallet_id"],
        created_at=row["created_at"],
        reverses_transaction_id=row["reverses_transaction_id"],
        hold_id=row["hold_id"],
        review_rule=row["review_rule"],
        entries=tuple(entries),
    )


async def get_transaction(
    connection: asyncpg.Connection, tenant_id: UUID, transaction_id: UUID
) -> Transaction | None:
    row = await connection.fetchrow(SELECT_TRANSACTION, tenant_id, transaction_id)
    if row is None:
        return None
    entry_rows = await connection.fetch(SELECT_TRANSACTION_ENTRIES, transaction_id)
    return transaction_record(row, [entry_record(entry) for entry in entry_rows])


async def version_range(
    connection: asyncpg.Connection, wallet_id: UUID, start: datetime | None, end: datetime | None
) -> tuple[int, int]:
    """(after, up_to): the versions of the entries created in [start, end], as a half-open
    range ``after < wallet_version <= up_to``."""
    after, up_to = 0, MAX_VERSION
    if start is not None:
        first = await connection.fetchval(FIRST_VERSION_FROM, wallet_id, start)
        after = first - 1 if first is not None else MAX_VERSION
    if end is not None:
        _, up_to = await balance_at(connection, wallet_id, end)
    return after, up_to


async def page_entries(
    connection: asyncpg.Connection,
    wallet_id: UUID,
    after_version: int,
    start: datetime | None,
    end: datetime | None,
    limit: int,
) -> list[Entry]:
    """Up to ``limit`` entries created in [start, end] with a version above ``after_version``."""
    after, up_to = await version_range(connection, wallet_id, start, end)
    rows = await connection.fetch(PAGE_ENTRIES, wallet_id, max(after, after_version), up_to, limit)
    return [entry_record(row) for row in rows]


async def balance_at(
    connection: asyncpg.Connection, wallet_id: UUID, moment: datetime, *, inclusive: bool = True
) -> tuple[int, int]:
    """(balance, wallet_version) after the last entry at (or strictly before) ``moment``."""
    row = await connection.fetchrow(BALANCE_AT if inclusive else BALANCE_BEFORE, wallet_id, moment)
    if row is None:
        return 0, 0
    return row["balance_after"], row["wallet_version"]


async def wallet_balance_at(
    connection: asyncpg.Connection, tenant_id: UUID, wallet_id: UUID, moment: datetime
) -> tuple[str, int, int] | None:
    """(currency, balance, wallet_version) at ``moment`` in one round trip; None: no wallet."""
    row = await connection.fetchrow(WALLET_BALANCE_AT, tenant_id, wallet_id, moment)
    if row is None:
        return None
    return row["currency"], row["balance"], row["wallet_version"]


async def range_totals(
    connection: asyncpg.Connection, wallet_id: UUID, start: datetime | None, end: datetime | None
) -> tuple[int, int]:
    """(total credits, total debits) of the entries created in [start, end]."""
    after, up_to = await version_range(connection, wallet_id, start, end)
    row = await connection.fetchrow(RANGE_TOTALS, wallet_id, after, up_to)
    return int(row["credits"]), int(row["debits"])

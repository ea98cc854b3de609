"""The SQL that moves money, as a handful of named statements.

Wallet rows are locked with ``SELECT … ORDER BY id FOR UPDATE`` (one fixed order,
so no two postings can deadlock) and everything a posting writes — transactions,
entries, the wallets' new balances, outbox events and the idempotency record —
goes in ONE statement of data-modifying CTEs, in the same database transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import asyncpg

from walletd import jsontext
from walletd.domain.events import OutboxEvent
from walletd.domain.ledger import Entry, Limits, WalletState, WalletStatus
from walletd.domain.records import Transaction
from walletd.ids import new_id

WALLET_STATE_COLUMNS = """
    id, tenant_id, currency, is_system, status, balance, held_balance, overdraft_limit,
    version, last_hash, limits, debit_day, debit_day_total, created_at, updated_at
"""

LOCK_WALLETS = f"""
SELECT {WALLET_STATE_COLUMNS}
FROM wallets
WHERE tenant_id = $1 AND id = ANY($2::uuid[])
ORDER BY id
FOR UPDATE
"""

# The group's wallets, locked in id order, each with its tenant's risk rules (as text)
# when the tenant is in $2 (it has something to screen): rules and locks in one trip.
LOCK_ANY_WALLETS = f"""
SELECT {WALLET_STATE_COLUMNS},
       (SELECT t.risk_rules::text FROM tenants t
        WHERE t.id = w.tenant_id AND t.id = ANY($2::uuid[])) AS tenant_rules
FROM wallets w
WHERE w.id = ANY($1::uuid[])
ORDER BY w.id
FOR UPDATE OF w
"""

COUNT_RECENT_DEBITS_MANY = """
SELECT e.wallet_id, count(*) AS debits
FROM entries e JOIN transactions t ON t.id = e.transaction_id
WHERE e.wallet_id = ANY($1::uuid[]) AND e.amount < 0 AND e.created_at > $2
  AND t.type IN ('debit', 'transfer', 'capture')
GROUP BY e.wallet_id
"""

INSERT_SYSTEM_WALLET = """
INSERT INTO wallets (id, tenant_id, currency, is_system, created_at, updated_at)
VALUES ($1, $2, $3, true, $4, $4)
ON CONFLICT (tenant_id, currency) WHERE is_system DO NOTHING
"""

SELECT_SYSTEM_WALLET = """
SELECT id FROM wallets WHERE tenant_id = $1 AND currency = $2 AND is_system
"""

COUNT_RECENT_DEBITS = """
SELECT count(*)
FROM entries e JOIN transactions t ON t.id = e.transaction_id
WHERE e.wallet_id = $1 AND e.amount < 0 AND e.created_at > $2
  AND t.type IN ('debit', 'transfer', 'capture')
"""

WRITE_POSTINGS = """
WITH new_transactions AS (
    INSERT INTO transactions (id, tenant_id, type, status, amount, currency, reference, metadata,
                              from_wallet_id, to_wallet_id, reverses_transaction_id, hold_id,
                              review_rule, created_at, updated_at)
    SELECT t.id, t.tenant_id, t.type, t.status, t.amount, t.currency, t.reference,
           t.metadata::jsonb,
           t.from_id, t.to_id, t.reverses, t.hold_id, t.review_rule, t.created_at, t.created_at
    FROM unnest($2::uuid[], $3::text[], $4::text[], $5::bigint[], $6::text[], $7::text[],
                $8::text[], $9::uuid[], $10::uuid[], $11::uuid[], $12::uuid[], $13::text[],
                $14::timestamptz[], $1::uuid[])
         AS t(id, type, status, amount, currency, reference, metadata, from_id, to_id, reverses,
              hold_id, review_rule, created_at, tenant_id)
),
new_entries AS (
    INSERT INTO entries (id, transaction_id, wallet_id, currency, amount, balance_after,
                         wallet_version, hash, created_at)
    SELECT * FROM unnest($15::uuid[], $16::uuid[], $17::uuid[], $18::text[], $19::bigint[],
                         $20::bigint[], $21::bigint[], $22::bytea[], $23::timestamptz[])
),
changed_wallets AS (
    UPDATE wallets AS w
    SET balance = c.balance, held_balance = c.held_balance, version = c.version,
        last_hash = c.last_hash, debit_day = c.debit_day, debit_day_total = c.debit_day_total,
        updated_at = c.updated_at
    FROM unnest($24::uuid[], $25::bigint[], $26::bigint[], $27::bigint[], $28::bytea[],
                $29::date[], $30::bigint[], $31::timestamptz[])
         AS c(id, balance, held_balance, version, last_hash, debit_day, debit_day_total,
              updated_at)
    WHERE w.id = c.id
),
new_events AS (
    INSERT INTO outbox (event_id, tenant_id, message_key, event_type, payload)
    SELECT e.event_id, e.tenant_id, e.message_key, e.event_type, e.payload::jsonb
    FROM unnest($32::uuid[], $33::text[], $34::text[], $35::text[], $42::uuid[]) WITH ORDINALITY
         AS e(event_id, message_key, event_type, payload, tenant_id, position)
    ORDER BY e.position
),
new_keys AS (
    INSERT INTO idempotency_keys (tenant_id, key, method, path, request_hash, status_code,
                                  response_body)
    SELECT k.tenant_id, k.key, k.method, k.path, k.request_hash, k.status_code, k.response_body
    FROM unnest($36::text[], $37::text[], $38::text[], $39::bytea[], $40::integer[],
                $41::bytea[], $43::uuid[])
         AS k(key, method, path, request_hash, status_code, response_body, tenant_id)
)
SELECT 1
"""


@dataclass(frozen=True, slots=True)
class IdempotencyRow:
    """The stored answer to one idempotent request."""

    key: str
    method: str
    path: str
    request_hash: bytes
    status_code: int
    response_body: bytes


def wallet_state(row: asyncpg.Record) -> WalletState:
    return WalletState(
        id=row["id"],
        tenant_id=row["tenant_id"],
        currency=row["currency"],
        is_system=row["is_system"],
        status=WalletStatus(row["status"]),
        balance=row["balance"],
        held_balance=row["held_balance"],
        overdraft_limit=row["overdraft_limit"],
        version=row["version"],
        last_hash=bytes(row["last_hash"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        limits=Limits.from_json(row["limits"]),
        debit_day=row["debit_day"],
        debit_day_total=row["debit_day_total"],
    )


async def lock_wallets(
    connection: asyncpg.Connection, tenant_id: UUID, wallet_ids: Iterable[UUID]
) -> dict[UUID, WalletState]:
    """Lock the tenant's wallets among ``wallet_ids`` in id order; missing ones are absent."""
    rows = await connection.fetch(LOCK_WALLETS, tenant_id, sorted(set(wallet_ids)))
    return {row["id"]: wallet_state(row) for row in rows}


async def lock_any_wallets(
    connection: asyncpg.Connection, wallet_ids: Iterable[UUID], rules_of: Iterable[UUID]
) -> tuple[dict[UUID, WalletState], dict[UUID, str]]:
    """Lock wallets of any tenant in id order (group commit); callers check the tenant.

    Also returns the stored risk rules (JSON text) of each tenant of ``rules_of`` that
    owns one of the wallets, read by the same statement.
    """
    rows = await connection.fetch(LOCK_ANY_WALLETS, sorted(set(wallet_ids)), list(rules_of))
    rules = {row["tenant_id"]: row["tenant_rules"] for row in rows if row["tenant_rules"]}
    return {row["id"]: wallet_state(row) for row in rows}, rules


async def count_recent_debits_many(
    connection: asyncpg.Connection, wallet_ids: Sequence[UUID], since: datetime
) -> dict[UUID, int]:
    """Debits, transfers out and captures of each wallet since ``since``."""
    rows = await connection.fetch(COUNT_RECENT_DEBITS_MANY, list(wallet_ids), since)
    return {row["wallet_id"]: row["debits"] for row in rows}


async def ensure_system_wallet(
    connection: asyncpg.Connection, tenant_id: UUID, currency: str, at: datetime
) -> UUID:
    """The tenant's system wallet for ``currency``, created on first use.

    Runs outside any other transaction (autocommit), as two statements: the select
    then sees a wallet that a concurrent first use committed meanwhile.
    """
    assert not connection.is_in_transaction()
    await connection.execute(INSERT_SYSTEM_WALLET, new_id(), tenant_id, currency, at)
    wallet_id: UUID | None = await connection.fetchval(SELECT_SYSTEM_WALLET, tenant_id, currency)
    assert wallet_id is not None
    return wallet_id


async def count_recent_debits(
    connection: asyncpg.Connection, wallet_id: UUID, since: datetime
) -> int:
    count: int = await connection.fetchval(COUNT_RECENT_DEBITS, wallet_id, since)
    return count


async def write_postings(
    connection: asyncpg.Connection,
    tenant_id: UUID,
    transactions: Sequence[Transaction],
    wallets: Sequence[WalletState],
    events: Sequence[OutboxEvent],
    idempotency_rows: Sequence[IdempotencyRow] = (),
) -> None:
    """Write one tenant's postings, wallet states, events and idempotency rows."""
    await write_group(
        connection,
        transactions,
        wallets,
        [(tenant_id, event) for event in events],
        [(tenant_id, row) for row in idempotency_rows],
    )


async def write_group(
    connection: asyncpg.Connection,
    transactions: Sequence[Transaction],
    wallets: Sequence[WalletState],
    events: Sequence[tuple[UUID, OutboxEvent]],
    idempotency_rows: Sequence[tuple[UUID, IdempotencyRow]] = (),
    *,
    stored: Sequence[Transaction] = (),
) -> None:
    """Write postings of any tenants, wallet states, events and idempotency rows at once.

    ``stored`` are transactions already in the table (a review being approved): only
    their entries are inserted.
    """
    entries: list[Entry] = [entry for tx in (*transactions, *stored) for entry in tx.entries]
    await connection.execute(
        WRITE_POSTINGS,
        [tx.tenant_id for tx in transactions],
        [tx.id for tx in transactions],
        [tx.type for tx in transactions],
        [tx.status for tx in transactions],
        [tx.amount for tx in transactions],
        [tx.currency for tx in transactions],
        [tx.reference for tx in transactions],
        [jsontext.dumps_text(tx.metadata) for tx in transactions],
        [tx.from_wallet_id for tx in transactions],
        [tx.to_wallet_id for tx in transactions],
        [tx.reverses_transaction_id for tx in transactions],
        [tx.hold_id for tx in transactions],
        [tx.review_rule for tx in transactions],
        [tx.created_at for tx in transactions],
        [entry.id for entry in entries],
        [entry.transaction_id for entry in entries],
        [entry.wallet_id for entry in entries],
        [entry.currency for entry in entries],
        [entry.amount for entry in entries],
        [entry.balance_after for entry in entries],
        [entry.wallet_version for entry in entries],
        [entry.hash for entry in entries],
        [entry.created_at for entry in entries],
        [wallet.id for wallet in wallets],
        [wallet.balance for wallet in wallets],
        [wallet.held_balance for wallet in wallets],
        [wallet.version for wallet in wallets],
        [wallet.last_hash for wallet in wallets],
        [wallet.debit_day for wallet in wallets],
        [wallet.debit_day_total for wallet in wallets],
        [wallet.updated_at for wallet in wallets],
        [event.event_id for _, event in events],
        [event.message_key for _, event in events],
        [event.event_type for _, event in events],
        [jsontext.dumps_text(event.payload) for _, event in events],
        [row.key for _, row in idempotency_rows],
        [row.method for _, row in idempotency_rows],
        [row.path for _, row in idempotency_rows],
        [row.request_hash for _, row in idempotency_rows],
        [row.status_code for _, row in idempotency_rows],
        [row.response_body for _, row in idempotency_rows],
        [tenant for tenant, _ in events],
        [tenant for tenant, _ in idempotency_rows],
    )

"""The SQL that moves money, as a handful of named statements: the engine's only SQL.

Lock order, for every command: wallet rows (``SELECT … ORDER BY id FOR UPDATE``), then
hold rows, then referenced transaction rows, each in id order — one fixed order, so no
two groups can deadlock. Everything a group writes — transactions, entries, the
wallets' new balances, outbox events and the idempotency records — goes in ONE
statement of data-modifying CTEs (:data:`WRITE_POSTINGS`); holds, review decisions and
admin log rows, when a group has any, go in the named statements beside it, in the
same database transaction (:func:`write_book`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import asyncpg

from walletd import jsontext
from walletd.adapters.hold_store import HOLD_COLUMNS, hold_record
from walletd.adapters.ledger_queries import (
    ENTRY_COLUMNS,
    TRANSACTION_COLUMNS,
    entry_record,
    transaction_record,
)
from walletd.domain.book import Book
from walletd.domain.events import OutboxEvent
from walletd.domain.ledger import Entry, Limits, WalletState, WalletStatus
from walletd.domain.records import Hold, Transaction
from walletd.ids import new_id

WALLET_STATE_COLUMNS = """
    id, tenant_id, currency, is_system, status, balance, held_balance, overdraft_limit,
    version, last_hash, limits, debit_day, debit_day_total, created_at, updated_at
"""

# Before a group is written: for each keyed request, whether its key is already bound
# (its answer is replayed from here, never by failing the group's write) and, when
# Redis could not lock it, whether another transaction holds the key's advisory lock.
CHECK_KEYS = """
SELECT k.position,
       CASE WHEN k.claim THEN NOT pg_try_advisory_xact_lock(hashtextextended(k.claim_name, 0))
            ELSE false END AS in_use,
       EXISTS (SELECT 1 FROM idempotency_keys i
               WHERE i.tenant_id = k.tenant_id AND i.key = k.key) AS taken
FROM unnest($1::uuid[], $2::text[], $3::bool[], $4::text[]) WITH ORDINALITY
     AS k(tenant_id, key, claim, claim_name, position)
ORDER BY k.position
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

# Read before the locks, to know the wallets to lock (a hold's wallet never changes).
SELECT_HOLDS = f"SELECT {HOLD_COLUMNS} FROM holds WHERE id = ANY($1::uuid[])"

# Taken only while the holds' wallets are locked.
LOCK_HOLDS = f"""
SELECT {HOLD_COLUMNS} FROM holds WHERE id = ANY($1::uuid[]) ORDER BY id FOR UPDATE
"""

SELECT_TRANSACTIONS = f"""
SELECT {TRANSACTION_COLUMNS} FROM transactions WHERE id = ANY($1::uuid[])
"""

# Taken only while the transactions' wallets are locked: a reversal or a decision of
# the same transaction locks the same wallets first, so what this reads is exact.
LOCK_TRANSACTIONS = f"""
SELECT {TRANSACTION_COLUMNS},
       (SELECT r.id FROM transactions r WHERE r.reverses_transaction_id = t.id) AS reversed_by
FROM transactions t WHERE t.id = ANY($1::uuid[]) ORDER BY t.id FOR UPDATE
"""

SELECT_ENTRIES_OF = f"""
SELECT {ENTRY_COLUMNS} FROM entries WHERE transaction_id = ANY($1::uuid[])
ORDER BY transaction_id, amount, wallet_id
"""

INSERT_HOLDS = """
INSERT INTO holds (id, tenant_id, wallet_id, amount, currency, status, expires_at, created_at,
                   updated_at)
SELECT h.id, h.tenant_id, h.wallet_id, h.amount, h.currency, 'pending', h.expires_at,
       h.created_at, h.created_at
FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::bigint[], $5::text[], $6::timestamptz[],
            $7::timestamptz[])
     AS h(id, tenant_id, wallet_id, amount, currency, expires_at, created_at)
"""

# A hold leaves ``pending`` exactly once: the status guard makes a second finish a no-op
# (and the caller asserts that every row changed).
FINISH_HOLDS = """
UPDATE holds AS h
SET status = f.status, captured_amount = f.captured_amount, transaction_id = f.transaction_id,
    updated_at = $6
FROM unnest($1::uuid[], $2::text[], $3::bigint[], $4::uuid[], $5::uuid[])
     AS f(id, status, captured_amount, transaction_id, tenant_id)
WHERE h.id = f.id AND h.tenant_id = f.tenant_id AND h.status = 'pending'
"""

SET_DECISIONS = """
UPDATE transactions AS t SET status = d.status, updated_at = $4
FROM unnest($1::uuid[], $2::text[], $3::uuid[]) AS d(id, status, tenant_id)
WHERE t.id = d.id AND t.tenant_id = d.tenant_id AND t.status = 'pending_review'
"""

INSERT_ACTIONS = """
INSERT INTO audit_log (tenant_id, key_id, action, target_type, target_id, before, after)
SELECT a.tenant_id, a.key_id, a.action, a.target_type, a.target_id, a.before::jsonb,
       a.after::jsonb
FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[])
     WITH ORDINALITY AS a(tenant_id, key_id, action, target_type, target_id, before, after, n)
ORDER BY a.n
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


async def check_keys(
    connection: asyncpg.Connection, keys: Sequence[tuple[UUID, str, bool, str]]
) -> list[tuple[bool, bool]]:
    """For each (tenant, key, claim in database, claim name): (in use, already bound)."""
    if not keys:
        return []
    rows = await connection.fetch(
        CHECK_KEYS,
        [tenant for tenant, _, _, _ in keys],
        [key for _, key, _, _ in keys],
        [claim for _, _, claim, _ in keys],
        [name for _, _, _, name in keys],
    )
    assert len(rows) == len(keys)
    return [(row["in_use"], row["taken"]) for row in rows]


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


async def read_holds(
    connection: asyncpg.Connection, hold_ids: Iterable[UUID], *, lock: bool
) -> dict[UUID, Hold]:
    """Holds by id (any tenant); ``lock`` only once their wallets are locked."""
    wanted = sorted(set(hold_ids))
    if not wanted:
        return {}
    rows = await connection.fetch(LOCK_HOLDS if lock else SELECT_HOLDS, wanted)
    return {row["id"]: hold_record(row) for row in rows}


async def read_transactions(
    connection: asyncpg.Connection, transaction_ids: Iterable[UUID], *, lock: bool
) -> tuple[dict[UUID, Transaction], dict[UUID, UUID]]:
    """Transactions by id (any tenant) with their entries, and original → its reversal.

    ``lock`` only once their wallets are locked; without it, nothing is known reversed.
    """
    wanted = sorted(set(transaction_ids))
    if not wanted:
        return {}, {}
    rows = await connection.fetch(LOCK_TRANSACTIONS if lock else SELECT_TRANSACTIONS, wanted)
    entries: dict[UUID, list[Entry]] = {}
    for entry_row in await connection.fetch(SELECT_ENTRIES_OF, wanted):
        entries.setdefault(entry_row["transaction_id"], []).append(entry_record(entry_row))
    found = {row["id"]: transaction_record(row, entries.get(row["id"], ())) for row in rows}
    reversals = {row["id"]: row["reversed_by"] for row in rows if lock and row["reversed_by"]}
    return found, reversals


async def write_book(
    connection: asyncpg.Connection,
    book: Book,
    idempotency_rows: Sequence[tuple[UUID, IdempotencyRow]],
) -> None:
    """Write everything a group's book produced, and the requests' stored answers."""
    touched = sorted(set(book.touched))
    await write_group(
        connection,
        book.transactions,
        [book.wallets[wallet_id] for wallet_id in touched],
        book.events,
        idempotency_rows,
        stored=book.decided,
    )
    if book.new_holds:
        await _insert_holds(connection, book.new_holds)
    if book.finished_holds:
        await _finish_holds(connection, book.finished_holds, book.at)
    if book.decided:
        await _set_decisions(connection, book.decided, book.at)
    if book.actions:
        await connection.execute(
            INSERT_ACTIONS,
            [action.tenant_id for action in book.actions],
            [action.key_id for action in book.actions],
            [action.action for action in book.actions],
            [action.target_type for action in book.actions],
            [action.target_id for action in book.actions],
            [jsontext.dumps_text(action.before) for action in book.actions],
            [jsontext.dumps_text(action.after) for action in book.actions],
        )


async def _insert_holds(connection: asyncpg.Connection, holds: Sequence[Hold]) -> None:
    assert all(hold.status == "pending" and hold.amount > 0 for hold in holds)
    await connection.execute(
        INSERT_HOLDS,
        [hold.id for hold in holds],
        [hold.tenant_id for hold in holds],
        [hold.wallet_id for hold in holds],
        [hold.amount for hold in holds],
        [hold.currency for hold in holds],
        [hold.expires_at for hold in holds],
        [hold.created_at for hold in holds],
    )


async def _finish_holds(
    connection: asyncpg.Connection, holds: Sequence[Hold], at: datetime
) -> None:
    assert all(hold.status != "pending" for hold in holds)
    assert len({hold.id for hold in holds}) == len(holds), "a hold finished twice"
    status = await connection.execute(
        FINISH_HOLDS,
        [hold.id for hold in holds],
        [hold.status for hold in holds],
        [hold.captured_amount for hold in holds],
        [hold.transaction_id for hold in holds],
        [hold.tenant_id for hold in holds],
        at,
    )
    assert status == f"UPDATE {len(holds)}", f"a hold was no longer pending: {status}"


async def _set_decisions(
    connection: asyncpg.Connection, decided: Sequence[Transaction], at: datetime
) -> None:
    assert all(transaction.status in ("posted", "rejected") for transaction in decided)
    status = await connection.execute(
        SET_DECISIONS,
        [transaction.id for transaction in decided],
        [transaction.status for transaction in decided],
        [transaction.tenant_id for transaction in decided],
        at,
    )
    assert status == f"UPDATE {len(decided)}", f"a review was no longer pending: {status}"


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

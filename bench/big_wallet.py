"""A wallet with a million entries, built fast yet valid for ``walletd audit``, and its reads.

Entries are computed in Python by the engine's own rules (``post_movement`` →
``append_entry`` for the chain and hashes, ``posting_event`` for the outbox), one credit
or debit per pair, so the tenant's system wallet for the currency gets a valid chain
too; ``created_at`` is spread over ~90 days. Everything is loaded with COPY in ONE
database transaction under ``session_replication_role = replica``: the foreign-key
checks would otherwise run once per row (2M+ times), and ``entries_balanced`` wants a
transaction's entries in one statement, which COPY chunks do not promise. The data is
computed valid and the audit re-checks it. Outbox rows are marked published at load
time: synthetic history, not for the relay or Kafka, and recent enough that the relay's
retention (published AND created over a week ago) leaves them for the audit to find.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import orjson

from walletd import jsontext
from walletd.adapters.ledger_store import LOCK_ANY_WALLETS, ensure_system_wallet, wallet_state
from walletd.domain.events import OutboxEvent, cloud_event, posting_event
from walletd.domain.hashing import canonical_timestamp
from walletd.domain.ledger import Limits, Movement, WalletState, WalletStatus, post_movement
from walletd.domain.records import Transaction, Wallet
from walletd.service_layer.wallets import wallet_event_data

CURRENCY = "CHF"
SPAN_DAYS = 90
STATEMENT_DAYS = 30
CHUNK_PAIRS = 20_000
DEBIT_SHARE = 0.45
MAX_ENTRIES = 50_000_000
REQUEST_POOL = 2048

TRANSACTION_COLUMNS = (
    "id",
    "tenant_id",
    "type",
    "status",
    "amount",
    "currency",
    "reference",
    "metadata",
    "from_wallet_id",
    "to_wallet_id",
    "reverses_transaction_id",
    "hold_id",
    "review_rule",
    "created_at",
    "updated_at",
)
ENTRY_COLUMNS = (
    "id",
    "transaction_id",
    "wallet_id",
    "currency",
    "amount",
    "balance_after",
    "wallet_version",
    "hash",
    "created_at",
)
OUTBOX_COLUMNS = (
    "event_id",
    "tenant_id",
    "message_key",
    "event_type",
    "payload",
    "created_at",
    "published_at",
)

INSERT_WALLET = """
INSERT INTO wallets (id, tenant_id, currency, owner_id, created_at, updated_at)
VALUES ($1, $2, $3, $4, $5, $5)
"""

UPDATE_WALLET = """
UPDATE wallets SET balance = $2, version = $3, last_hash = $4, debit_day = $5,
                   debit_day_total = $6, updated_at = $7
WHERE id = $1
"""


@dataclass
class BigWallet:
    """What was built: ids, the time span of the entries, and how long each step took."""

    wallet_id: UUID
    system_wallet_id: UUID
    currency: str
    entries: int
    start: datetime
    end: datetime
    balance: int
    version: int
    timings: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        return {
            "wallet_id": str(self.wallet_id),
            "system_wallet_id": str(self.system_wallet_id),
            "currency": self.currency,
            "entries": self.entries,
            "start": canonical_timestamp(self.start),
            "end": canonical_timestamp(self.end),
            "balance": self.balance,
            "version": self.version,
            "seconds": {key: round(value, 2) for key, value in self.timings.items()},
        }


@dataclass
class Chunk:
    transactions: list[tuple[Any, ...]]
    entries: list[tuple[Any, ...]]
    events: list[tuple[Any, ...]]


class LedgerWriter:
    """Generates the pairs of postings in order; owns the two wallets' running states."""

    def __init__(self, tenant_id: UUID, big: WalletState, system: WalletState, pairs: int) -> None:
        assert 1 <= pairs <= MAX_ENTRIES
        self.tenant_id, self.big, self.system, self.pairs = tenant_id, big, system, pairs
        self.states = {big.id: big, system.id: system}
        self.system_ids = frozenset({system.id})
        self.start = big.created_at
        self.step_us = SPAN_DAYS * 86_400_000_000 // pairs
        self.rng = random.Random(20261124)
        self.last_at = self.start
        self.loaded_at = datetime.now(UTC)

    def chunk(self, first: int, stop: int) -> Chunk:
        """Postings ``first`` .. ``stop - 1``: COPY-ready rows."""
        chunk = Chunk([], [], [])
        for index in range(first, stop):
            at = self.start + timedelta(microseconds=(index + 1) * self.step_us)
            transaction = self._post(at)
            self._rows(transaction, [posting_event(transaction, self.system_ids)], chunk)
            self.last_at = at
        return chunk

    def _post(self, at: datetime) -> Transaction:
        big, system, rng = self.big, self.system, self.rng
        amount = rng.randint(100, 10_000)
        debit = big.balance >= amount and rng.random() < DEBIT_SHARE
        if debit:
            movement = Movement("debit", big.id, system.id, amount, CURRENCY)
        else:
            movement = Movement("credit", system.id, big.id, amount, CURRENCY)
        transaction_id = uuid4()
        entries = post_movement(self.states, movement, transaction_id, at)
        return Transaction(
            id=transaction_id,
            tenant_id=self.tenant_id,
            type=movement.type,
            status="posted",
            amount=amount,
            currency=CURRENCY,
            reference=None,
            metadata={},
            from_wallet_id=big.id if debit else None,
            to_wallet_id=None if debit else big.id,
            created_at=at,
            entries=tuple(entries),
        )

    def _rows(self, tx: Transaction, events: Sequence[OutboxEvent], chunk: Chunk) -> None:
        at = tx.created_at
        tenant_id = self.tenant_id
        chunk.transactions.append(
            (tx.id, tenant_id, tx.type, tx.status, tx.amount, tx.currency, None, "{}",
             tx.from_wallet_id, tx.to_wallet_id, None, None, None, at, at)
        )  # fmt: skip
        chunk.entries.extend(
            (e.id, e.transaction_id, e.wallet_id, e.currency, e.amount, e.balance_after,
             e.wallet_version, e.hash, e.created_at)
            for e in tx.entries
        )  # fmt: skip
        chunk.events.extend(
            (e.event_id, tenant_id, e.message_key, e.event_type, jsontext.dumps_text(e.payload),
             at, self.loaded_at)
            for e in events
        )  # fmt: skip


async def _copy(connection: asyncpg.Connection, chunk: Chunk) -> None:
    await connection.copy_records_to_table(
        "transactions", records=chunk.transactions, columns=TRANSACTION_COLUMNS
    )
    await connection.copy_records_to_table("entries", records=chunk.entries, columns=ENTRY_COLUMNS)
    await connection.copy_records_to_table("outbox", records=chunk.events, columns=OUTBOX_COLUMNS)


async def _new_wallet(
    connection: asyncpg.Connection, tenant_id: UUID, start: datetime
) -> WalletState:
    """Insert the big wallet (created at ``start``) with its ``wallet.created`` event."""
    wallet_id = uuid4()
    await connection.execute(INSERT_WALLET, wallet_id, tenant_id, CURRENCY, "bench-big", start)
    record = Wallet(
        id=wallet_id,
        tenant_id=tenant_id,
        currency=CURRENCY,
        owner_id="bench-big",
        is_system=False,
        status=WalletStatus.ACTIVE,
        balance=0,
        held_balance=0,
        overdraft_limit=0,
        version=0,
        limits=Limits(),
        metadata={},
        created_at=start,
        updated_at=start,
    )
    event = cloud_event("wallet.created", wallet_id, start, wallet_event_data(record))
    payload = jsontext.dumps_text(event.payload)
    await connection.copy_records_to_table(
        "outbox",
        records=[
            (
                event.event_id,
                tenant_id,
                event.message_key,
                event.event_type,
                payload,
                start,
                datetime.now(UTC),
            )
        ],
        columns=OUTBOX_COLUMNS,
    )
    return await _lock(connection, tenant_id, wallet_id)


async def _lock(connection: asyncpg.Connection, tenant_id: UUID, wallet_id: UUID) -> WalletState:
    """The engine's lock statement (this connection decodes jsonb as text, not dicts)."""
    (row,) = await connection.fetch(LOCK_ANY_WALLETS, [wallet_id], [])
    assert row["tenant_id"] == tenant_id
    return wallet_state({**dict(row), "limits": orjson.loads(row["limits"])})  # type: ignore[arg-type]


async def _write_states(connection: asyncpg.Connection, states: Sequence[WalletState]) -> None:
    for state in states:
        await connection.execute(
            UPDATE_WALLET,
            state.id,
            state.balance,
            state.version,
            state.last_hash,
            state.debit_day,
            state.debit_day_total,
            state.updated_at,
        )


async def build(database_url: str, tenant_id: UUID, entries: int) -> BigWallet:
    """Create and load the big wallet of ``tenant_id``; then VACUUM ANALYZE the ledger."""
    timings: dict[str, float] = {}
    began = time.monotonic()
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=SPAN_DAYS, minutes=5)
    connection = await asyncpg.connect(database_url, command_timeout=None)
    try:
        system_id = await ensure_system_wallet(connection, tenant_id, CURRENCY, start)
        async with connection.transaction():
            await connection.execute("SET LOCAL session_replication_role = replica")
            big = await _new_wallet(connection, tenant_id, start)
            system = await _lock(connection, tenant_id, system_id)
            writer = LedgerWriter(tenant_id, big, system, entries)
            await _load(connection, writer, timings)
            await _write_states(connection, [big, system])
        timings["load_total"] = time.monotonic() - began
        vacuum_began = time.monotonic()
        await connection.execute("VACUUM (ANALYZE) entries")
        await connection.execute("ANALYZE transactions; ANALYZE outbox; ANALYZE wallets")
        timings["vacuum_analyze"] = time.monotonic() - vacuum_began
    finally:
        await connection.close()
    return BigWallet(
        big.id,
        system_id,
        CURRENCY,
        big.version,
        start,
        writer.last_at,
        big.balance,
        big.version,
        timings,
    )


async def _load(
    connection: asyncpg.Connection, writer: LedgerWriter, timings: dict[str, float]
) -> None:
    """Generate chunk n+1 in a thread while chunk n is copied (PostgreSQL works meanwhile)."""
    loop = asyncio.get_running_loop()
    bounds = [
        (first, min(first + CHUNK_PAIRS, writer.pairs))
        for first in range(0, writer.pairs, CHUNK_PAIRS)
    ]
    generate_seconds = copy_seconds = 0.0
    pending = loop.run_in_executor(None, writer.chunk, *bounds[0])
    for position in range(len(bounds)):
        waited = time.monotonic()
        chunk = await pending
        generate_seconds += time.monotonic() - waited
        if position + 1 < len(bounds):
            pending = loop.run_in_executor(None, writer.chunk, *bounds[position + 1])
        copy_began = time.monotonic()
        await _copy(connection, chunk)
        copy_seconds += time.monotonic() - copy_began
    timings["waiting_for_generation"] = generate_seconds
    timings["copy"] = copy_seconds


# ----------------------------------------------------------------------------- read requests


def _moment(start: datetime, end: datetime, rng: random.Random) -> datetime:
    span_us = int((end - start).total_seconds() * 1e6)
    return start + timedelta(microseconds=rng.randrange(max(1, span_us)))


def read_requests(big: BigWallet, seed: int = 5) -> dict[str, list[dict[str, Any]]]:
    """Pools of GET requests for the three read scenarios (random times in the span)."""
    rng = random.Random(seed)
    base = f"/v1/wallets/{big.wallet_id}"
    month = timedelta(days=STATEMENT_DAYS)
    pools: dict[str, list[dict[str, Any]]] = {
        "balance_at": [],
        "entries_page": [],
        "statement_30d": [],
    }
    for _ in range(REQUEST_POOL):
        at = canonical_timestamp(_moment(big.start, big.end, rng))
        pools["balance_at"].append({"path": f"{base}/balance?at={at}"})
        since = canonical_timestamp(_moment(big.start, big.end, rng))
        pools["entries_page"].append({"path": f"{base}/entries?from={since}&limit=100"})
        opening = _moment(big.start, big.end - month, rng)
        window = f"from={canonical_timestamp(opening)}&to={canonical_timestamp(opening + month)}"
        pools["statement_30d"].append({"path": f"{base}/statement?{window}"})
    for pool in pools.values():
        for request in pool:
            request.update(method="GET", body=None, items=1, idempotent=False)
    return pools


def check_answers(big: BigWallet, balance: dict[str, Any], statement: dict[str, Any]) -> list[str]:
    """Problems with the API's view of the big wallet (empty when all is right)."""
    problems = []
    if balance.get("balance") != big.balance or balance.get("wallet_version") != big.version:
        problems.append(f"balance now: {balance}, expected {big.balance} at v{big.version}")
    opening, closing = statement.get("opening_balance"), statement.get("closing_balance")
    credits, debits = statement.get("total_credits"), statement.get("total_debits")
    if None in (opening, closing, credits, debits) or closing != opening + credits - debits:
        problems.append("statement: closing != opening + credits - debits")
    if len(statement.get("entries", [])) == 0:
        problems.append("statement: a 30-day window returned no entry")
    return problems


def check_paths(big: BigWallet) -> tuple[str, str]:
    """The balance now and a statement of the first 30 days, for :func:`check_answers`."""
    base = f"/v1/wallets/{big.wallet_id}"
    now = canonical_timestamp(big.end + timedelta(seconds=1))
    window = f"from={canonical_timestamp(big.start)}"
    window += f"&to={canonical_timestamp(big.start + timedelta(days=STATEMENT_DAYS))}"
    return f"{base}/balance?at={now}", f"{base}/statement?{window}"

"""``walletd audit``: checks the ledger's invariants (docs/audit.md) from the database alone.

Everything is read in ONE read-only REPEATABLE READ transaction, so every check sees
the same snapshot while the engine keeps posting. Per-transaction and per-tenant sums
are set-based SQL; the per-wallet chains (versions, running balances, hashes) are
streamed through a server-side cursor ordered by ``(wallet_id, wallet_version)`` and
merged with a cursor over the wallets ordered by id: memory stays constant whatever
the size of the ledger. Only the first ``max_listed`` violations are kept; all are
counted. docs/audit.md explains each check.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol

import asyncpg

from walletd.domain.hashing import GENESIS_HASH, canonical_entry, chain_hash
from walletd.errors import Unavailable

DEFAULT_MAX_LISTED = 1000
MAX_LISTED_LIMIT = 100_000
DEFAULT_FETCH_ROWS = 5000
MAX_FETCH_ROWS = 100_000
# Covers the gap between the database clock (outbox.created_at, the posting's BEGIN)
# and the engine clock (transactions.created_at) and a retention job that cut through
# the events of the one transaction at the boundary.
DEFAULT_OUTBOX_MARGIN_SECONDS = 60.0
CONNECT_TIMEOUT_SECONDS = 10.0
# One statement may sort or hash a whole table; an hour is an incident, not an audit.
STATEMENT_TIMEOUT_MS = 3_600_000
HASH_BYTES = 32

SubjectKind = Literal["wallet_id", "transaction_id", "tenant_id"]


@dataclass(frozen=True, slots=True)
class Violation:
    """One broken invariant (1 to 7, docs/audit.md) and what it concerns."""

    invariant: int
    subject: SubjectKind
    subject_id: str
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {"invariant": self.invariant, self.subject: self.subject_id, "detail": self.detail}


@dataclass(frozen=True, slots=True)
class AuditOptions:
    """Knobs of one audit run; every one is bounded."""

    max_listed: int = DEFAULT_MAX_LISTED
    fetch_rows: int = DEFAULT_FETCH_ROWS
    outbox_margin_seconds: float = DEFAULT_OUTBOX_MARGIN_SECONDS

    def __post_init__(self) -> None:
        assert 1 <= self.max_listed <= MAX_LISTED_LIMIT
        assert 1 <= self.fetch_rows <= MAX_FETCH_ROWS
        assert 0 <= self.outbox_margin_seconds <= 86_400 * 365


@dataclass(slots=True)
class AuditReport:
    """What one run checked and found; ``violations`` holds the first ``max_listed``."""

    max_listed: int = DEFAULT_MAX_LISTED
    checked: dict[str, int] = field(default_factory=dict)
    violations: list[Violation] = field(default_factory=list)
    by_invariant: Counter[int] = field(default_factory=Counter)
    outbox_checked_since: str | None = None

    @property
    def violation_count(self) -> int:
        return sum(self.by_invariant.values())

    @property
    def ok(self) -> bool:
        return self.violation_count == 0

    def add(self, invariant: int, subject: SubjectKind, subject_id: object, detail: str) -> None:
        assert 1 <= invariant <= 7
        self.by_invariant[invariant] += 1
        if len(self.violations) < self.max_listed:
            self.violations.append(Violation(invariant, subject, str(subject_id), detail))

    def count(self, what: str, how_many: int = 1) -> None:
        self.checked[what] = self.checked.get(what, 0) + how_many

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "checked": dict(self.checked),
            "violation_count": self.violation_count,
            "violations_by_invariant": {str(k): v for k, v in sorted(self.by_invariant.items())},
            "violations_truncated": self.violation_count > len(self.violations),
            "outbox_checked_since": self.outbox_checked_since,
            "violations": [violation.to_json() for violation in self.violations],
        }


class ProgressSink(Protocol):
    """Where the audit reports how far it got (a progress bar, or nothing)."""

    def phase(self, description: str, total: int | None) -> None: ...

    def advance(self, count: int) -> None: ...


class NullProgress:
    def phase(self, description: str, total: int | None) -> None:
        return None

    def advance(self, count: int) -> None:
        return None


# ----------------------------------------------------------------------------- SQL

ENTRY_COUNT_ESTIMATE = """
SELECT greatest(c.reltuples::bigint, coalesce(s.n_live_tup, 0), 0)
FROM pg_class c LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
WHERE c.oid = 'entries'::regclass
"""

# Invariant 1, per transaction: a posted one has >= 2 entries summing to 0 per
# currency, all in its currency, and its amount is what its positive entries move;
# any other status has no entry; an entry's transaction exists.
TRANSACTION_VIOLATIONS = """
WITH per_currency AS (
    SELECT transaction_id, currency, count(*) AS entry_count, sum(amount) AS total,
           sum(amount) FILTER (WHERE amount > 0) AS credited
    FROM entries GROUP BY transaction_id, currency
), per_transaction AS (
    SELECT transaction_id, sum(entry_count)::bigint AS entry_count,
           array_agg(currency::text ORDER BY currency) AS currencies,
           array_agg(currency::text ORDER BY currency) FILTER (WHERE total <> 0) AS unbalanced,
           coalesce(sum(credited), 0) AS credited
    FROM per_currency GROUP BY transaction_id
)
SELECT coalesce(t.id, p.transaction_id) AS transaction_id, t.status, t.amount,
       t.currency::text AS currency, coalesce(p.entry_count, 0) AS entry_count,
       p.currencies, p.unbalanced, p.credited
FROM transactions t FULL JOIN per_transaction p ON p.transaction_id = t.id
WHERE t.id IS NULL
   OR (t.status = 'posted' AND (p.entry_count IS NULL OR p.entry_count < 2
       OR p.unbalanced IS NOT NULL OR p.currencies <> ARRAY[t.currency::text]
       OR p.credited <> t.amount))
   OR (t.status <> 'posted' AND p.entry_count IS NOT NULL)
ORDER BY 1
"""

TRANSACTION_COUNT = "SELECT count(*) FROM transactions"

# Invariant 5: per tenant and currency, every wallet (system included) sums to 0.
TENANT_SUMS = """
SELECT tenant_id, currency::text AS currency, sum(balance) AS total, count(*) AS wallets
FROM wallets GROUP BY tenant_id, currency ORDER BY tenant_id, currency
"""

OUTBOX_BOUNDARY = """
SELECT o.id, o.created_at,
       pg_sequence_last_value(pg_get_serial_sequence('outbox', 'id')::regclass) AS last_id
FROM (SELECT 1) AS one
LEFT JOIN LATERAL (SELECT id, created_at FROM outbox ORDER BY id LIMIT 1) AS o ON true
"""

POSTED_SINCE_COUNT = """
SELECT count(*) FROM transactions
WHERE status = 'posted' AND ($1::timestamptz IS NULL OR created_at > $1)
"""

# Invariant 6: every entry of a posted transaction has its event in the outbox: in its
# transaction's posting row (event id = transaction id), or as a row of its own.
MISSING_EVENTS = """
SELECT e.transaction_id, array_agg(e.wallet_id::text ORDER BY e.wallet_id) AS wallets
FROM entries e JOIN transactions t ON t.id = e.transaction_id
WHERE t.status = 'posted' AND ($1::timestamptz IS NULL OR t.created_at > $1)
  AND NOT EXISTS (
      SELECT 1 FROM outbox o
      WHERE o.event_id = e.transaction_id AND o.event_type = 'ledger.posted'
        AND o.payload -> 'entries' @> jsonb_build_array(jsonb_build_array(e.id::text)))
  AND NOT EXISTS (
      SELECT 1 FROM outbox o
      WHERE o.payload -> 'data' ->> 'transaction_id' = e.transaction_id::text
        AND o.payload -> 'data' ->> 'wallet_id' = e.wallet_id::text)
GROUP BY e.transaction_id ORDER BY e.transaction_id
"""

# Invariants 3, 4 and 7 (the wallet side): the wallet row and what it should hold.
WALLETS_BY_ID = """
WITH pending_holds AS (
    SELECT wallet_id, sum(amount) AS total FROM holds WHERE status = 'pending'
    GROUP BY wallet_id
), pending_reviews AS (
    SELECT from_wallet_id AS wallet_id, sum(amount) AS total FROM transactions
    WHERE status = 'pending_review' AND from_wallet_id IS NOT NULL GROUP BY from_wallet_id
)
SELECT w.id, w.currency::text AS currency, w.is_system, w.balance, w.held_balance,
       w.overdraft_limit, w.version, w.last_hash,
       coalesce(h.total, 0) + coalesce(r.total, 0) AS expected_held
FROM wallets w
LEFT JOIN pending_holds h ON h.wallet_id = w.id
LEFT JOIN pending_reviews r ON r.wallet_id = w.id
ORDER BY w.id
"""

# Invariants 2 and 7 (the entry side), streamed in chain order.
ENTRIES_IN_CHAIN_ORDER = """
SELECT id, transaction_id, wallet_id, currency::text, amount, balance_after, wallet_version,
       hash, created_at
FROM entries ORDER BY wallet_id, wallet_version
"""


# ----------------------------------------------------------------------------- streams


class RowStream:
    """A server-side cursor read ``fetch_rows`` at a time, with one row of look-ahead."""

    def __init__(self, cursor: Any, fetch_rows: int) -> None:
        self._cursor, self._fetch_rows = cursor, fetch_rows
        self._rows: list[asyncpg.Record] = []
        self._position = 0
        self._exhausted = False

    async def batch(self) -> list[asyncpg.Record]:
        """The next rows (what is left of the current batch first); [] at the end."""
        if self._position < len(self._rows):
            rows = self._rows[self._position :]
            self._rows, self._position = [], 0
            return rows
        if self._exhausted:
            return []
        rows = await self._cursor.fetch(self._fetch_rows)
        self._exhausted = len(rows) < self._fetch_rows
        return list(rows)

    async def peek(self) -> asyncpg.Record | None:
        if self._position >= len(self._rows):
            self._rows, self._position = await self.batch(), 0
        return self._rows[self._position] if self._rows else None

    async def pop(self) -> asyncpg.Record | None:
        row = await self.peek()
        self._position += row is not None
        return row


async def open_stream(
    connection: asyncpg.Connection, query: str, fetch_rows: int, *args: object
) -> RowStream:
    cursor = await connection.cursor(query, *args)
    return RowStream(cursor, fetch_rows)


async def stream_rows(
    connection: asyncpg.Connection, query: str, fetch_rows: int, *args: object
) -> AsyncIterator[asyncpg.Record]:
    stream = await open_stream(connection, query, fetch_rows, *args)
    while rows := await stream.batch():
        for row in rows:
            yield row


# ----------------------------------------------------------------------------- set-based checks


async def check_transactions(
    connection: asyncpg.Connection, report: AuditReport, options: AuditOptions
) -> None:
    """Invariant 1, one SQL statement grouping entries by transaction."""
    report.count("transactions", int(await connection.fetchval(TRANSACTION_COUNT)))
    async for row in stream_rows(connection, TRANSACTION_VIOLATIONS, options.fetch_rows):
        report.add(1, "transaction_id", row["transaction_id"], transaction_problem(row))


def transaction_problem(row: asyncpg.Record) -> str:
    """Say in words why one row of :data:`TRANSACTION_VIOLATIONS` is a violation."""
    status, count = row["status"], row["entry_count"]
    if status is None:
        return f"{count} entries belong to a transaction that does not exist"
    if status != "posted":
        return f"a {status} transaction has {count} entries (expected none)"
    if count < 2:
        return f"the posted transaction has {count} entries (expected at least 2)"
    if row["unbalanced"] is not None:
        return f"entries do not sum to zero in {', '.join(row['unbalanced'])}"
    if list(row["currencies"]) != [row["currency"]]:
        currencies = ", ".join(row["currencies"])
        return f"entries are in {currencies}, the transaction in {row['currency']}"
    return f"transaction amount is {row['amount']} but its entries move {int(row['credited'])}"


async def check_tenant_sums(
    connection: asyncpg.Connection, report: AuditReport, options: AuditOptions
) -> None:
    """Invariant 5: each tenant's wallets of one currency sum to zero."""
    async for row in stream_rows(connection, TENANT_SUMS, options.fetch_rows):
        report.count("tenant_currencies")
        total = int(row["total"])
        if total != 0:
            detail = f"the {row['wallets']} {row['currency']} wallets sum to {total}, not 0"
            report.add(5, "tenant_id", row["tenant_id"], detail)


async def outbox_cutoff(
    connection: asyncpg.Connection, options: AuditOptions
) -> tuple[bool, datetime | None]:
    """(check anything?, only transactions created after this; None = all).

    Retention deletes old published rows, so a transaction older than the oldest row
    still present may rightly have no events left. When the oldest row is the first
    ever written (id 1), or no row was ever written, nothing was deleted: check all.
    """
    row = await connection.fetchrow(OUTBOX_BOUNDARY)
    assert row is not None
    if row["id"] is None:
        return row["last_id"] is None, None
    if row["id"] == 1:
        return True, None
    oldest: datetime = row["created_at"]
    return True, oldest + timedelta(seconds=options.outbox_margin_seconds)


async def check_outbox(
    connection: asyncpg.Connection, report: AuditReport, options: AuditOptions
) -> None:
    """Invariant 6 (outbox side): every entry of a posted transaction has its event."""
    check, since = await outbox_cutoff(connection, options)
    if not check:
        report.outbox_checked_since = "never (every outbox row was deleted by retention)"
        report.count("outbox_transactions", 0)
        return
    report.outbox_checked_since = since.isoformat() if since else "the first transaction"
    checked = int(await connection.fetchval(POSTED_SINCE_COUNT, since))
    report.count("outbox_transactions", checked)
    async for row in stream_rows(connection, MISSING_EVENTS, options.fetch_rows, since):
        wallets = ", ".join(row["wallets"])
        report.add(6, "transaction_id", row["transaction_id"], f"no outbox event for {wallets}")


# ----------------------------------------------------------------------------- wallet chains


class WalletChain:
    """Invariants 2 and 7 for one wallet's entries, read in ``wallet_version`` order."""

    __slots__ = ("balance", "currency", "entries", "last_hash", "report", "version", "wallet_id")

    def __init__(self, wallet_id: Any, currency: str | None, report: AuditReport) -> None:
        self.wallet_id, self.currency, self.report = wallet_id, currency, report
        self.entries = 0
        self.version = 0
        self.balance = 0
        self.last_hash = GENESIS_HASH

    def check(self, row: asyncpg.Record) -> None:
        (
            entry_id,
            transaction_id,
            wallet_id,
            currency,
            amount,
            balance_after,
            version,
            stored,
            at,
        ) = row
        self.entries += 1
        if version != self.version + 1:
            self._broken(2, f"wallet_version {version} follows {self.version}")
        if balance_after != self.balance + amount:
            self._broken(
                2,
                f"entry v{version}: balance_after {balance_after} != {self.balance} + {amount}",
            )
        if self.currency is not None and currency != self.currency:
            self._broken(2, f"entry v{version} is in {currency}, the wallet in {self.currency}")
        canonical = canonical_entry(
            entry_id=entry_id,
            transaction_id=transaction_id,
            wallet_id=wallet_id,
            currency=currency,
            amount=amount,
            balance_after=balance_after,
            wallet_version=version,
            created_at=at,
        )
        expected = chain_hash(self.last_hash, canonical)
        stored = bytes(stored)
        if stored != expected:
            self._broken(7, f"entry v{version} ({entry_id}): hash does not verify")
        # Go on from what is stored, so that one changed entry is reported once.
        self.version, self.balance = version, balance_after
        self.last_hash = stored if len(stored) == HASH_BYTES else expected

    def finish(self, wallet: asyncpg.Record | None) -> None:
        """Compare the wallet row with the chain (invariants 3, 4 and 7)."""
        if wallet is None:
            self._broken(2, f"{self.entries} entries belong to a wallet that does not exist")
            return
        report = self.report
        report.count("wallets")
        if wallet["balance"] != self.balance:
            self._broken(3, f"balance is {wallet['balance']}, the last entry says {self.balance}")
        if wallet["version"] != self.version or self.version != self.entries:
            self._broken(
                3, f"version is {wallet['version']}, the wallet has {self.entries} entries"
            )
        if bytes(wallet["last_hash"]) != self.last_hash:
            self._broken(7, "last_hash is not the hash of the last entry")
        check_wallet_funds(wallet, report)

    def _broken(self, invariant: int, detail: str) -> None:
        self.report.add(invariant, "wallet_id", self.wallet_id, detail)


def check_wallet_funds(wallet: asyncpg.Record, report: AuditReport) -> None:
    """Invariant 4: the balance floor and ``held_balance`` = pending holds + reviews."""
    held, expected_held = wallet["held_balance"], int(wallet["expected_held"])
    if held != expected_held:
        detail = f"held_balance is {held}, pending holds and reviews add up to {expected_held}"
        report.add(4, "wallet_id", wallet["id"], detail)
    available = wallet["balance"] - held
    if not wallet["is_system"] and available < -wallet["overdraft_limit"]:
        detail = f"available balance {available} is below -{wallet['overdraft_limit']}"
        report.add(4, "wallet_id", wallet["id"], detail)


async def check_wallet_chains(
    connection: asyncpg.Connection,
    report: AuditReport,
    options: AuditOptions,
    progress: ProgressSink,
) -> None:
    """Invariants 2, 3, 4 and 7: merge the entry stream with the wallet stream by id."""
    wallets = await open_stream(connection, WALLETS_BY_ID, options.fetch_rows)
    entries = await open_stream(connection, ENTRIES_IN_CHAIN_ORDER, options.fetch_rows)
    chain: WalletChain | None = None
    while rows := await entries.batch():
        for row in rows:
            if chain is None or row[2] != chain.wallet_id:
                if chain is not None:
                    chain.finish(await pop_wallet(wallets, chain.wallet_id))
                wallet = await skip_wallets_before(wallets, row[2].bytes, report)
                chain = WalletChain(row[2], wallet["currency"] if wallet else None, report)
            chain.check(row)
        report.count("entries", len(rows))
        progress.advance(len(rows))
    if chain is not None:
        chain.finish(await pop_wallet(wallets, chain.wallet_id))
    while (wallet := await wallets.pop()) is not None:
        WalletChain(wallet["id"], wallet["currency"], report).finish(wallet)


async def skip_wallets_before(
    wallets: RowStream, wallet_id_bytes: bytes, report: AuditReport
) -> asyncpg.Record | None:
    """Finish the wallets that have no entry up to ``wallet_id``; return its row if any."""
    while (wallet := await wallets.peek()) is not None and wallet["id"].bytes < wallet_id_bytes:
        await wallets.pop()
        WalletChain(wallet["id"], wallet["currency"], report).finish(wallet)
    return wallet if wallet is not None and wallet["id"].bytes == wallet_id_bytes else None


async def pop_wallet(wallets: RowStream, wallet_id: Any) -> asyncpg.Record | None:
    """The row of ``wallet_id`` when it is next in the wallet stream (it was peeked)."""
    wallet = await wallets.peek()
    if wallet is not None and wallet["id"] == wallet_id:
        return await wallets.pop()
    return None


# ----------------------------------------------------------------------------- the run


async def audit_connection(
    connection: asyncpg.Connection,
    options: AuditOptions | None = None,
    progress: ProgressSink | None = None,
) -> AuditReport:
    """Run every check on ``connection`` in one read-only REPEATABLE READ snapshot."""
    options = options or AuditOptions()
    progress = progress or NullProgress()
    report = AuditReport(max_listed=options.max_listed)
    async with connection.transaction(isolation="repeatable_read", readonly=True):
        estimate = int(await connection.fetchval(ENTRY_COUNT_ESTIMATE))
        progress.phase("transactions (invariant 1)", None)
        await check_transactions(connection, report, options)
        progress.phase("tenant sums (invariant 5)", None)
        await check_tenant_sums(connection, report, options)
        progress.phase("outbox (invariant 6)", None)
        await check_outbox(connection, report, options)
        progress.phase("wallet chains (invariants 2, 3, 4, 7)", estimate)
        await check_wallet_chains(connection, report, options, progress)
    for what in ("transactions", "wallets", "entries", "tenant_currencies"):
        report.checked.setdefault(what, 0)
    return report


CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.InvalidAuthorizationSpecificationError,
    asyncpg.InvalidCatalogNameError,
)


async def connect(database_url: str) -> asyncpg.Connection:
    """A dedicated connection for the audit; :class:`Unavailable` in one line if none."""
    try:
        return await asyncpg.connect(
            database_url,
            timeout=CONNECT_TIMEOUT_SECONDS,
            command_timeout=None,
            server_settings={
                "application_name": "walletd-audit",
                "statement_timeout": str(STATEMENT_TIMEOUT_MS),
            },
        )
    except CONNECTION_ERRORS as error:
        raise Unavailable(f"PostgreSQL is unreachable ({type(error).__name__}: {error})") from error


async def run_audit(
    database_url: str,
    options: AuditOptions | None = None,
    progress: ProgressSink | None = None,
) -> AuditReport:
    """Connect, audit, disconnect. Raises :class:`Unavailable` for any database trouble."""
    connection = await connect(database_url)
    try:
        return await audit_connection(connection, options, progress)
    except asyncpg.UndefinedTableError as error:
        raise Unavailable("the schema is missing: run `walletd migrate` first") from error
    except (*CONNECTION_ERRORS, asyncpg.QueryCanceledError) as error:
        raise Unavailable(f"PostgreSQL failed during the audit ({type(error).__name__})") from error
    finally:
        # The connection may be the thing that broke; closing it must not hide why.
        with contextlib.suppress(*CONNECTION_ERRORS):
            await connection.close(timeout=CONNECT_TIMEOUT_SECONDS)

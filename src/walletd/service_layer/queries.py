"""Read use cases: transactions, holds, the review queue, entry pages, balances, statements."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from uuid import UUID

import asyncpg

from walletd.adapters import hold_store, ledger_queries, review_store, wallet_store
from walletd.adapters.postgres import Database
from walletd.domain.ledger import Entry
from walletd.domain.records import Hold, Transaction, Wallet
from walletd.errors import NotFound

STATEMENT_MAX_ENTRIES = 10_000
CSV_PAGE = 2_000


@dataclass(frozen=True, slots=True)
class Statement:
    wallet: Wallet
    start: datetime | None
    end: datetime
    opening_balance: int
    closing_balance: int
    total_credits: int
    total_debits: int
    entries: list[Entry]
    next_version: int | None


class LedgerQueries:
    def __init__(self, database: Database) -> None:
        self._database = database

    async def transaction(self, tenant_id: UUID, transaction_id: UUID) -> Transaction:
        async with self._database.connection() as connection:
            found = await ledger_queries.get_transaction(connection, tenant_id, transaction_id)
        if found is None:
            raise NotFound(f"transaction {transaction_id} not found")
        return found

    async def hold(self, tenant_id: UUID, hold_id: UUID) -> Hold:
        async with self._database.connection() as connection:
            found = await hold_store.get_hold(connection, tenant_id, hold_id)
        if found is None:
            raise NotFound(f"hold {hold_id} not found")
        return found

    async def pending_reviews(
        self, tenant_id: UUID, after: tuple[datetime, UUID] | None, limit: int
    ) -> list[Transaction]:
        """Transactions pending review, oldest first, after the ``(created_at, id)`` cursor."""
        async with self._database.connection() as connection:
            return await review_store.list_pending(connection, tenant_id, after, limit)

    async def _wallet(
        self, connection: asyncpg.Connection, tenant_id: UUID, wallet_id: UUID
    ) -> Wallet:
        wallet = await wallet_store.get_wallet(connection, tenant_id, wallet_id)
        if wallet is None:
            raise NotFound(f"wallet {wallet_id} not found")
        return wallet

    async def entries(
        self,
        tenant_id: UUID,
        wallet_id: UUID,
        after_version: int,
        start: datetime | None,
        end: datetime | None,
        limit: int,
    ) -> list[Entry]:
        async with self._database.connection() as connection:
            await self._wallet(connection, tenant_id, wallet_id)
            return await ledger_queries.page_entries(
                connection, wallet_id, after_version, start, end, limit
            )

    async def balance_at(
        self, tenant_id: UUID, wallet_id: UUID, moment: datetime
    ) -> tuple[str, int, int]:
        """(currency, balance, wallet_version) after the last entry at or before ``moment``."""
        async with self._database.connection() as connection:
            found = await ledger_queries.wallet_balance_at(connection, tenant_id, wallet_id, moment)
        if found is None:
            raise NotFound(f"wallet {wallet_id} not found")
        return found

    async def statement(
        self,
        tenant_id: UUID,
        wallet_id: UUID,
        start: datetime | None,
        end: datetime | None,
        after_version: int = 0,
        max_entries: int = STATEMENT_MAX_ENTRIES,
    ) -> Statement:
        """Opening balance before ``start``, closing at ``end`` (inclusive), totals between."""
        end = end or datetime.now(UTC)
        async with (
            self._database.connection() as connection,
            connection.transaction(isolation="repeatable_read", readonly=True),
        ):
            wallet = await self._wallet(connection, tenant_id, wallet_id)
            opening = 0
            if start is not None:
                opening, _ = await ledger_queries.balance_at(
                    connection, wallet_id, start, inclusive=False
                )
            closing, _ = await ledger_queries.balance_at(connection, wallet_id, end)
            credits, debits = await ledger_queries.range_totals(connection, wallet_id, start, end)
            entries = await ledger_queries.page_entries(
                connection, wallet_id, after_version, start, end, max_entries + 1
            )
        next_version = (
            entries[max_entries - 1].wallet_version if len(entries) > max_entries else None
        )
        return Statement(
            wallet,
            start,
            end,
            opening,
            closing,
            credits,
            debits,
            entries[:max_entries],
            next_version,
        )

    async def stream_entries(
        self, tenant_id: UUID, wallet_id: UUID, start: datetime | None, end: datetime
    ) -> AsyncIterator[Entry]:
        """All entries of the range, page by page (for CSV statements)."""
        after_version = 0
        while True:
            async with self._database.connection() as connection:
                page = await ledger_queries.page_entries(
                    connection, wallet_id, after_version, start, end, CSV_PAGE
                )
            for entry in page:
                yield entry
            if len(page) < CSV_PAGE:
                return
            after_version = page[-1].wallet_version

"""The posting engine: applies credits, debits and transfers in one database transaction.

One call takes a list of commands (a single request is a list of one, a batch is up
to 1,000). It locks every wallet involved in id order, applies the pure rules of
:mod:`walletd.domain.ledger` to each command in turn — a failing command changes
nothing, so its neighbours still get their exact answers — and writes the result
with one statement. Round trips: BEGIN, lock, write, COMMIT.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import asyncpg

from walletd.adapters import ledger_store
from walletd.adapters.postgres import Database
from walletd.domain.commands import Credit, Debit, PostingCommand, Transfer
from walletd.domain.events import OutboxEvent, entry_events
from walletd.domain.ledger import Movement, WalletState, post_movement
from walletd.domain.records import Transaction
from walletd.errors import NotFound, WalletdError
from walletd.service_layer.idempotency import DuplicateKey, IdempotentRequest, Renderer, is_duplicate_key

MAX_BATCH = 1000


@dataclass(frozen=True, slots=True)
class ItemFailure:
    """Command ``index`` of a call failed with ``error``; it changed nothing."""

    index: int
    error: WalletdError


PostingResult = Transaction | ItemFailure


def posting_time(states: Sequence[WalletState]) -> datetime:
    """Now, but never before a locked wallet's last change: entry times never go back."""
    now = datetime.now(UTC)
    latest = max((state.updated_at for state in states), default=now)
    return max(now, latest)


class PostingEngine:
    """Posts commands for one process; keeps a cache of system wallet ids."""

    def __init__(self, database: Database) -> None:
        self._database = database
        self._system_wallets: dict[tuple[UUID, str], UUID] = {}

    async def system_wallet(
        self, connection: asyncpg.Connection, tenant_id: UUID, currency: str
    ) -> UUID:
        cached = self._system_wallets.get((tenant_id, currency))
        if cached is None:
            at = datetime.now(UTC)
            cached = await ledger_store.ensure_system_wallet(connection, tenant_id, currency, at)
            self._system_wallets[(tenant_id, currency)] = cached
        return cached

    async def _movements(
        self, connection: asyncpg.Connection, tenant_id: UUID, commands: Sequence[PostingCommand]
    ) -> list[Movement]:
        movements = []
        for command in commands:
            if isinstance(command, Transfer):
                movements.append(
                    Movement("transfer", command.from_wallet_id, command.to_wallet_id,
                             command.amount, command.currency)
                )
                continue
            system = await self.system_wallet(connection, tenant_id, command.currency)
            if isinstance(command, Credit):
                movements.append(
                    Movement("credit", system, command.wallet_id, command.amount, command.currency)
                )
            else:
                movements.append(
                    Movement("debit", command.wallet_id, system, command.amount, command.currency)
                )
        return movements

    async def post(
        self,
        tenant_id: UUID,
        commands: Sequence[PostingCommand],
        *,
        atomic: bool = True,
        request: IdempotentRequest | None = None,
        render: Renderer | None = None,
    ) -> list[PostingResult]:
        """Apply ``commands``; with ``atomic`` the first failure cancels all of them.

        When ``request`` is given, ``render(results)`` gives the HTTP answer stored
        under its key in the same transaction; :class:`DuplicateKey` when taken.
        """
        assert 0 < len(commands) <= MAX_BATCH
        try:
            async with self._database.unit_of_work() as uow:
                connection = uow.connection
                movements = await self._movements(connection, tenant_id, commands)
                wallet_ids = {m.source_id for m in movements} | {m.destination_id for m in movements}
                states = await ledger_store.lock_wallets(connection, tenant_id, wallet_ids)
                at = posting_time(list(states.values()))
                await self._load_minute_counts(connection, states, at)
                results, touched = self._apply(tenant_id, commands, movements, states, at, atomic)
                await self._write(connection, tenant_id, results, touched, states, request, render)
                await uow.commit()
        except asyncpg.UniqueViolationError as error:
            if is_duplicate_key(error):
                raise DuplicateKey(request.key if request else "") from error
            raise
        return results

    async def _load_minute_counts(
        self, connection: asyncpg.Connection, states: dict[UUID, WalletState], at: datetime
    ) -> None:
        for state in states.values():
            if state.limits.max_debits_per_minute is not None and not state.is_system:
                since = at - timedelta(minutes=1)
                state.debits_last_minute = await ledger_store.count_recent_debits(
                    connection, state.id, since
                )

    def _apply(
        self,
        tenant_id: UUID,
        commands: Sequence[PostingCommand],
        movements: Sequence[Movement],
        states: dict[UUID, WalletState],
        at: datetime,
        atomic: bool,
    ) -> tuple[list[PostingResult], set[UUID]]:
        results: list[PostingResult] = []
        touched: set[UUID] = set()
        for index, (command, movement) in enumerate(zip(commands, movements, strict=True)):
            try:
                results.append(self._apply_one(tenant_id, command, movement, states, at))
                touched.update((movement.source_id, movement.destination_id))
            except WalletdError as error:
                if atomic:
                    return [ItemFailure(index, error)], set()
                results.append(ItemFailure(index, error))
        return results, touched

    def _apply_one(
        self,
        tenant_id: UUID,
        command: PostingCommand,
        movement: Movement,
        states: dict[UUID, WalletState],
        at: datetime,
    ) -> Transaction:
        for wallet_id in (movement.source_id, movement.destination_id):
            state = states.get(wallet_id)
            if state is None or (state.is_system and not _is_system_leg(command, wallet_id)):
                raise NotFound(f"wallet {wallet_id} not found")
        transaction_id = uuid4()
        entries = post_movement(states, movement, transaction_id, at)
        is_transfer = isinstance(command, Transfer)
        return Transaction(
            id=transaction_id,
            tenant_id=tenant_id,
            type=movement.type,
            status="posted",
            amount=command.amount,
            currency=command.currency,
            reference=command.reference,
            metadata=command.metadata,
            from_wallet_id=command.from_wallet_id if is_transfer else _user_wallet(command, "debit"),
            to_wallet_id=command.to_wallet_id if is_transfer else _user_wallet(command, "credit"),
            created_at=at,
            entries=tuple(entries),
        )

    async def _write(
        self,
        connection: asyncpg.Connection,
        tenant_id: UUID,
        results: Sequence[PostingResult],
        touched: set[UUID],
        states: dict[UUID, WalletState],
        request: IdempotentRequest | None,
        render: Renderer | None,
    ) -> None:
        posted = [result for result in results if isinstance(result, Transaction)]
        system_ids = frozenset(state.id for state in states.values() if state.is_system)
        events: list[OutboxEvent] = [event for tx in posted for event in entry_events(tx, system_ids)]
        rows = []
        if request is not None:
            assert render is not None
            rows.append(request.row(*render(results)))
        changed = [states[wallet_id] for wallet_id in sorted(touched)]
        await ledger_store.write_postings(connection, tenant_id, posted, changed, events, rows)


def _is_system_leg(command: PostingCommand, wallet_id: UUID) -> bool:
    """The system wallet may appear only as the outside party of a credit or debit."""
    if isinstance(command, Transfer):
        return False
    return wallet_id != command.wallet_id


def _user_wallet(command: Credit | Debit, side: str) -> UUID | None:
    if side == "credit":
        return command.wallet_id if isinstance(command, Credit) else None
    return command.wallet_id if isinstance(command, Debit) else None

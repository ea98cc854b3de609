"""Hold use cases: place, read, capture, void, expire, and the expiry loop of the API.

Every change follows the posting engine's pattern: lock the wallet rows in id order,
then the hold row ``FOR UPDATE`` (always that order, so holds and postings cannot
deadlock), apply the pure rules of :mod:`walletd.domain.ledger`, write wallets,
transaction, events and the idempotency answer with one statement, commit. A hold
whose ``expires_at`` has passed is expired by whoever locks it first: the loop, or a
capture or void, which then answers ``hold_not_pending``.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg
import structlog

from walletd.adapters import hold_store, ledger_store
from walletd.adapters.ledger_store import IdempotencyRow
from walletd.adapters.postgres import Database, UnitOfWork
from walletd.domain.events import OutboxEvent, cloud_event, entry_events
from walletd.domain.ledger import Movement, WalletState, place_hold, post_movement, release_hold
from walletd.domain.records import Hold, Transaction
from walletd.errors import HoldNotPending, NotFound, Unavailable, ValidationFailed, WalletdError
from walletd.ids import new_id
from walletd.service_layer.idempotency import (
    DuplicateKey,
    IdempotentRequest,
    claim_key,
    is_duplicate_key,
)
from walletd.service_layer.posting import PostingEngine, posting_time

HoldAnswer = Callable[[Hold], tuple[int, bytes]]

EXPIRY_BATCH_HOLDS = 200  # holds looked at per expiry round
EXPIRY_ROUNDS_PER_RUN = 10  # rounds per loop tick while rounds come back full
EXPIRY_STOP_TIMEOUT_SECONDS = 5.0

logger = structlog.get_logger("walletd.holds")


def hold_event(event_type: str, hold: Hold, at: datetime) -> OutboxEvent:
    """``hold.created`` / ``captured`` / ``voided`` / ``expired``, keyed by the wallet."""
    data: dict[str, Any] = {
        "tenant_id": str(hold.tenant_id),
        "hold_id": str(hold.id),
        "wallet_id": str(hold.wallet_id),
        "status": hold.status,
        "amount": hold.amount,
        "currency": hold.currency,
        "captured_amount": hold.captured_amount,
        "transaction_id": str(hold.transaction_id) if hold.transaction_id else None,
    }
    return cloud_event(event_type, hold.wallet_id, at, data)


def is_due(hold: Hold, at: datetime) -> bool:
    """A pending hold whose ``expires_at`` has come: it must be released, not used."""
    return hold.status == "pending" and hold.expires_at is not None and hold.expires_at <= at


def _user_wallet(states: dict[UUID, WalletState], wallet_id: UUID) -> WalletState:
    state = states.get(wallet_id)
    if state is None or state.is_system:
        raise NotFound(f"wallet {wallet_id} not found")
    return state


def _answer_rows(
    request: IdempotentRequest | None, answer: HoldAnswer | None, hold: Hold
) -> list[IdempotencyRow]:
    if request is None:
        return []
    assert answer is not None, "an idempotent request needs the answer to store"
    return [request.row(*answer(hold))]


class HoldService:
    """Holds of one process; ``engine`` provides the system wallets captures pay."""

    def __init__(self, database: Database, engine: PostingEngine) -> None:
        self._database = database
        self._engine = engine

    @contextlib.asynccontextmanager
    async def _work(
        self, request: IdempotentRequest | None, tenant_id: UUID
    ) -> AsyncIterator[UnitOfWork]:
        """A unit of work whose idempotency-key collision becomes :class:`DuplicateKey`."""
        try:
            async with self._database.unit_of_work() as uow:
                await claim_key(uow.connection, tenant_id, request)
                yield uow
        except asyncpg.UniqueViolationError as error:
            if is_duplicate_key(error):
                raise DuplicateKey(request.key if request else "") from error
            raise

    async def get(self, tenant_id: UUID, hold_id: UUID) -> Hold:
        async with self._database.connection() as connection:
            hold = await hold_store.get_hold(connection, tenant_id, hold_id)
        if hold is None:
            raise NotFound(f"hold {hold_id} not found")
        return hold

    async def place(
        self,
        tenant_id: UUID,
        *,
        wallet_id: UUID,
        amount: int,
        currency: str,
        expires_at: datetime | None = None,
        request: IdempotentRequest | None = None,
        answer: HoldAnswer | None = None,
    ) -> Hold:
        """Reserve ``amount`` on the wallet: ``held_balance`` up, no entry."""
        if amount <= 0:
            raise ValidationFailed("amount must be a positive integer")
        if expires_at is not None and expires_at.utcoffset() is None:
            raise ValidationFailed("expires_at needs a time zone (use Z for UTC)")
        async with self._work(request, tenant_id) as uow:
            connection = uow.connection
            states = await ledger_store.lock_wallets(connection, tenant_id, [wallet_id])
            wallet = _user_wallet(states, wallet_id)
            at = posting_time([wallet])
            if expires_at is not None and expires_at <= at:
                raise ValidationFailed("expires_at must be in the future")
            place_hold(wallet, amount, currency, at)
            hold = Hold(
                new_id(),
                tenant_id,
                wallet_id,
                amount,
                currency,
                "pending",
                None,
                None,
                expires_at,
                at,
            )
            await ledger_store.write_postings(
                connection,
                tenant_id,
                [],
                [wallet],
                [hold_event("hold.created", hold, at)],
                _answer_rows(request, answer, hold),
            )
            await hold_store.insert_hold(connection, hold)
            await uow.commit()
        return hold

    async def _find(self, connection: asyncpg.Connection, tenant_id: UUID, hold_id: UUID) -> Hold:
        found = await hold_store.get_hold(connection, tenant_id, hold_id)
        if found is None:
            raise NotFound(f"hold {hold_id} not found")
        return found

    async def _lock(
        self, connection: asyncpg.Connection, found: Hold, other_wallet: UUID | None = None
    ) -> tuple[Hold, dict[UUID, WalletState], datetime]:
        """Lock the hold's wallet (and ``other_wallet``) in id order, then the hold.

        ``found`` was read without a lock; only its wallet id (which never changes) is
        used, the hold itself is read again under the locks.
        """
        wanted = [found.wallet_id] if other_wallet is None else [found.wallet_id, other_wallet]
        states = await ledger_store.lock_wallets(connection, found.tenant_id, wanted)
        hold = await hold_store.get_hold(connection, found.tenant_id, found.id, lock=True)
        assert hold is not None, f"hold {found.id} disappeared"
        assert hold.wallet_id in states, f"hold {found.id} lost its wallet"
        return hold, states, posting_time(list(states.values()))

    async def _finish_if_not_pending(
        self, uow: UnitOfWork, hold: Hold, wallet: WalletState, at: datetime
    ) -> None:
        """Raise ``hold_not_pending`` for a finished hold; a due one is expired first."""
        if is_due(hold, at):
            await _expire_locked(uow.connection, wallet, [hold], at)
            await uow.commit()
            raise HoldNotPending(f"hold {hold.id} expired at {hold.expires_at}")
        if hold.status != "pending":
            raise HoldNotPending(f"hold {hold.id} is {hold.status}")

    async def capture(
        self,
        tenant_id: UUID,
        hold_id: UUID,
        *,
        amount: int | None = None,
        to_wallet_id: UUID | None = None,
        request: IdempotentRequest | None = None,
        answer: HoldAnswer | None = None,
    ) -> Hold:
        """Post one ``capture`` of ``amount`` (default: all) and release the rest."""
        if amount is not None and amount <= 0:
            raise ValidationFailed("amount must be a positive integer")
        async with self._work(request, tenant_id) as uow:
            connection = uow.connection
            found = await self._find(connection, tenant_id, hold_id)
            destination = to_wallet_id or await self._engine.system_wallet(
                tenant_id, found.currency
            )
            hold, states, at = await self._lock(connection, found, destination)
            if to_wallet_id is not None:
                _user_wallet(states, to_wallet_id)
            source = states[hold.wallet_id]
            await self._finish_if_not_pending(uow, hold, source, at)
            taken = hold.amount if amount is None else amount
            if taken > hold.amount:
                raise ValidationFailed(f"capture amount {taken} is above the held {hold.amount}")
            await _load_minute_count(connection, source, at)
            movement = Movement(
                "capture",
                hold.wallet_id,
                destination,
                taken,
                hold.currency,
                release_held=hold.amount,
            )
            transaction = _capture_transaction(hold, movement, to_wallet_id, states, at)
            captured = replace(
                hold, status="captured", captured_amount=taken, transaction_id=transaction.id
            )
            system_ids = frozenset(state.id for state in states.values() if state.is_system)
            events = [
                *entry_events(transaction, system_ids),
                hold_event("hold.captured", captured, at),
            ]
            changed = [states[wallet_id] for wallet_id in sorted(states)]
            await ledger_store.write_postings(
                connection,
                tenant_id,
                [transaction],
                changed,
                events,
                _answer_rows(request, answer, captured),
            )
            await hold_store.finish_hold(connection, captured, at)
            await uow.commit()
        return captured

    async def void(
        self,
        tenant_id: UUID,
        hold_id: UUID,
        *,
        request: IdempotentRequest | None = None,
        answer: HoldAnswer | None = None,
    ) -> Hold:
        """Release the whole hold; nothing is posted."""
        async with self._work(request, tenant_id) as uow:
            connection = uow.connection
            hold, states, at = await self._lock(
                connection, await self._find(connection, tenant_id, hold_id)
            )
            wallet = states[hold.wallet_id]
            await self._finish_if_not_pending(uow, hold, wallet, at)
            release_hold(wallet, hold.amount, at)
            voided = replace(hold, status="voided")
            await ledger_store.write_postings(
                connection,
                tenant_id,
                [],
                [wallet],
                [hold_event("hold.voided", voided, at)],
                _answer_rows(request, answer, voided),
            )
            await hold_store.finish_hold(connection, voided, at)
            await uow.commit()
        return voided

    async def expire_due(
        self, *, now: datetime | None = None, max_holds: int = EXPIRY_BATCH_HOLDS
    ) -> int:
        """Expire up to about ``max_holds`` due holds, one transaction per wallet.

        Safe with any number of concurrent callers (other API processes): each wallet
        is locked before its holds, and only holds still ``pending`` are taken.
        """
        assert 0 < max_holds <= 10_000
        moment = now or datetime.now(UTC)
        async with self._database.connection() as connection:
            wallets = await hold_store.due_wallets(connection, moment, max_holds)
        # Several processes read the same candidates; a different order per process
        # lets them work on different wallets instead of queueing on the same locks.
        random.shuffle(wallets)
        expired = 0
        for tenant_id, wallet_id in wallets:
            try:
                expired += await self._expire_wallet(tenant_id, wallet_id, moment, max_holds)
            except Unavailable:
                raise  # the database is gone: the whole round waits for the next tick
            except Exception as error:  # one broken wallet must not block the others; logged
                logger.exception("hold_expiry_failed", wallet_id=str(wallet_id), error=repr(error))
        return expired

    async def _expire_wallet(
        self, tenant_id: UUID, wallet_id: UUID, now: datetime, limit: int
    ) -> int:
        async with self._database.unit_of_work() as uow:
            connection = uow.connection
            states = await ledger_store.lock_wallets(connection, tenant_id, [wallet_id])
            wallet = states[wallet_id]
            at = posting_time([wallet])
            holds = await hold_store.lock_due_holds(
                connection, tenant_id, wallet_id, max(now, at), limit
            )
            if not holds:
                return 0  # another process expired them (or they were captured) first
            await _expire_locked(connection, wallet, holds, at)
            await uow.commit()
        return len(holds)


async def _expire_locked(
    connection: asyncpg.Connection, wallet: WalletState, holds: Sequence[Hold], at: datetime
) -> None:
    """Release ``holds`` (pending, row-locked, their wallet locked) and mark them expired."""
    assert holds
    assert all(hold.wallet_id == wallet.id for hold in holds)
    for hold in holds:
        release_hold(wallet, hold.amount, at)
    events = [hold_event("hold.expired", replace(hold, status="expired"), at) for hold in holds]
    await ledger_store.write_postings(connection, wallet.tenant_id, [], [wallet], events)
    await hold_store.expire_holds(connection, wallet.tenant_id, [hold.id for hold in holds], at)


async def _load_minute_count(
    connection: asyncpg.Connection, wallet: WalletState, at: datetime
) -> None:
    """``max_debits_per_minute`` needs the wallet's debits of the last minute."""
    if wallet.limits.max_debits_per_minute is not None and not wallet.is_system:
        since = at - timedelta(minutes=1)
        wallet.debits_last_minute = await ledger_store.count_recent_debits(
            connection, wallet.id, since
        )


def _capture_transaction(
    hold: Hold,
    movement: Movement,
    to_wallet_id: UUID | None,
    states: dict[UUID, WalletState],
    at: datetime,
) -> Transaction:
    """Apply ``movement`` to ``states`` (or raise, changing nothing) as a capture."""
    transaction_id = new_id()
    entries = post_movement(states, movement, transaction_id, at)
    return Transaction(
        id=transaction_id,
        tenant_id=hold.tenant_id,
        type="capture",
        status="posted",
        amount=movement.amount,
        currency=hold.currency,
        reference=None,
        metadata={},
        from_wallet_id=hold.wallet_id,
        to_wallet_id=to_wallet_id,
        created_at=at,
        hold_id=hold.id,
        entries=tuple(entries),
    )


class HoldExpirer:
    """The API process's background task: expire due holds every ``interval_seconds``."""

    def __init__(self, service: HoldService, interval_seconds: float) -> None:
        assert interval_seconds > 0
        self._service = service
        self._interval_seconds = interval_seconds
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        assert self._task is None, "the expirer is already running"
        self._task = asyncio.create_task(self._run(), name="walletd-hold-expiry")

    async def stop(self, timeout_seconds: float = EXPIRY_STOP_TIMEOUT_SECONDS) -> None:
        """Let the current round finish (cancel it after ``timeout_seconds``)."""
        if self._task is None:
            return
        self._stopping.set()
        task, self._task = self._task, None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(task, timeout_seconds)

    async def run_once(self) -> int:
        """Expire due holds in bounded rounds; errors are logged, never raised."""
        total = 0
        try:
            for _ in range(EXPIRY_ROUNDS_PER_RUN):
                expired = await self._service.expire_due()
                total += expired
                if expired < EXPIRY_BATCH_HOLDS or self._stopping.is_set():
                    break
        except WalletdError as error:
            logger.warning("hold_expiry_failed", error=error.detail)
        except Exception as error:  # the loop must outlive one bad round; it is logged
            logger.exception("hold_expiry_failed", error=repr(error))
        if total:
            logger.info("holds_expired", count=total)
        return total

    async def _run(self) -> None:
        while not self._stopping.is_set():
            await self.run_once()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._interval_seconds)

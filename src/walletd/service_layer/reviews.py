"""The review queue: list pending reviews, approve one (post it) or reject one (release it).

Each decision locks the transaction row, then the wallet rows in id order (the
posting engine never locks transaction rows, so the two cannot deadlock), applies
the pure ledger rules, and writes entries, wallets, status and events with one
statement, plus the admin audit record and the idempotency answer, in one
database transaction. Approval applies every posting rule as of approval time;
when one fails (a frozen wallet, a limit) the review stays pending.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, Literal
from uuid import UUID

import asyncpg
import structlog

from walletd.adapters import admin_log, ledger_store, review_store
from walletd.adapters.postgres import Database
from walletd.domain.events import entry_events
from walletd.domain.ledger import Movement, WalletState, post_movement, release_hold
from walletd.domain.records import Transaction
from walletd.domain.risk import review_event
from walletd.errors import NotFound, ReviewNotPending
from walletd.service_layer.idempotency import IdempotentRequest, claim_key, store_answer
from walletd.service_layer.posting import PostingEngine, posting_time
from walletd.service_layer.tenants import Principal

ReviewAnswer = Callable[[Transaction], tuple[int, bytes]]
Decision = Literal["approve", "reject"]

logger = structlog.get_logger("walletd.reviews")


def review_snapshot(transaction: Transaction) -> dict[str, Any]:
    """What the admin log records of a reviewed transaction."""
    return {
        "status": transaction.status,
        "type": transaction.type,
        "amount": transaction.amount,
        "currency": transaction.currency,
        "from_wallet_id": str(transaction.from_wallet_id),
        "to_wallet_id": str(transaction.to_wallet_id) if transaction.to_wallet_id else None,
        "rule": transaction.review_rule,
    }


async def _lock_pending(
    connection: asyncpg.Connection, tenant_id: UUID, transaction_id: UUID
) -> Transaction:
    found = await review_store.lock_transaction(connection, tenant_id, transaction_id)
    if found is None:
        raise NotFound(f"transaction {transaction_id} not found")
    if found.status != "pending_review":
        raise ReviewNotPending(
            f"transaction {transaction_id} is {found.status}, not pending_review"
        )
    assert found.from_wallet_id is not None
    assert found.type in ("debit", "transfer")
    return found


async def _load_minute_count(
    connection: asyncpg.Connection, payer: WalletState, at: datetime
) -> None:
    """The same exact count the posting engine takes, under the same row lock."""
    if payer.limits.max_debits_per_minute is not None:
        payer.debits_last_minute = await ledger_store.count_recent_debits(
            connection, payer.id, at - timedelta(minutes=1)
        )


class ReviewService:
    def __init__(self, database: Database, engine: PostingEngine) -> None:
        self._database = database
        self._engine = engine

    async def pending(
        self, tenant_id: UUID, after: tuple[datetime, UUID] | None, limit: int
    ) -> list[Transaction]:
        async with self._database.connection() as connection:
            return await review_store.list_pending(connection, tenant_id, after, limit)

    async def decide(
        self,
        principal: Principal,
        transaction_id: UUID,
        decision: Decision,
        reason: str | None,
        *,
        request: IdempotentRequest | None = None,
        answer: ReviewAnswer | None = None,
    ) -> Transaction:
        """Approve (post) or reject (release) the pending review ``transaction_id``."""
        tenant_id = principal.tenant_id
        async with self._database.unit_of_work() as uow:
            connection = uow.connection
            await claim_key(connection, tenant_id, request)
            pending = await _lock_pending(connection, tenant_id, transaction_id)
            if decision == "approve":
                decided = await self._approve(connection, pending)
            else:
                decided = await self._reject(connection, pending)
            await admin_log.record_action(
                connection,
                tenant_id=tenant_id,
                key_id=principal.key_id,
                action=f"review.{decision}",
                target_type="transaction",
                target_id=str(transaction_id),
                before=review_snapshot(pending),
                after={**review_snapshot(decided), "reason": reason},
            )
            if request is not None:
                assert answer is not None, "an idempotent request needs the answer to store"
                await store_answer(connection, tenant_id, request.row(*answer(decided)))
            await uow.commit()
        logger.info(
            "review_decided",
            tenant_id=str(tenant_id),
            transaction_id=str(transaction_id),
            decision=decision,
            rule=pending.review_rule,
        )
        return decided

    async def _approve(self, connection: asyncpg.Connection, pending: Transaction) -> Transaction:
        assert pending.from_wallet_id is not None
        destination = pending.to_wallet_id
        if pending.type == "debit":
            destination = await self._engine.system_wallet(pending.tenant_id, pending.currency)
        assert destination is not None
        movement = Movement(
            pending.type,
            pending.from_wallet_id,
            destination,
            pending.amount,
            pending.currency,
            release_held=pending.amount,
        )
        states = await ledger_store.lock_wallets(
            connection, pending.tenant_id, {movement.source_id, destination}
        )
        assert set(states) == {movement.source_id, destination}
        payer = states[movement.source_id]
        assert payer.held_balance >= pending.amount, "a pending review's amount is held"
        at = posting_time(list(states.values()))
        await _load_minute_count(connection, payer, at)
        entries = post_movement(states, movement, pending.id, at)
        decided = replace(pending, status="posted", entries=tuple(entries))
        system_ids = frozenset(state.id for state in states.values() if state.is_system)
        events = [review_event("review.approved", decided, at), *entry_events(decided, system_ids)]
        changed = [states[wallet_id] for wallet_id in sorted(states)]
        await review_store.write_decision(connection, decided, changed, events, at)
        return decided

    async def _reject(self, connection: asyncpg.Connection, pending: Transaction) -> Transaction:
        assert pending.from_wallet_id is not None
        states = await ledger_store.lock_wallets(
            connection, pending.tenant_id, {pending.from_wallet_id}
        )
        payer = states[pending.from_wallet_id]
        at = posting_time([payer])
        release_hold(payer, pending.amount, at)
        decided = replace(pending, status="rejected")
        events = [review_event("review.rejected", decided, at)]
        await review_store.write_decision(connection, decided, [payer], events, at)
        return decided

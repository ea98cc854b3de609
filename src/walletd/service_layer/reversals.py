"""Reversals: an admin posts the mirror of a posted transaction, once.

The mirror has type ``reversal`` and negates every entry of the original: the amount
flows back from the original destination to the original source. It is linked by
``reverses_transaction_id``, which the schema keeps UNIQUE, so a transaction is
reversed at most once even when two admins race (the loser gets ``already_reversed``).
The wallet that gives the money back obeys its floor (``insufficient_funds``) and may
not be closed, but a frozen wallet can still be reversed. Reversals are final: a
reversal itself cannot be reversed (``validation_error``); post a new movement instead.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from walletd.adapters import admin_log, ledger_queries, ledger_store
from walletd.adapters.postgres import Database, UnitOfWork
from walletd.domain.events import entry_events
from walletd.domain.ledger import Movement, WalletState, post_movement
from walletd.domain.records import Transaction
from walletd.errors import AlreadyReversed, InsufficientFunds, NotFound, ValidationFailed
from walletd.ids import new_id
from walletd.service_layer.idempotency import (
    DuplicateKey,
    IdempotentRequest,
    claim_key,
    is_duplicate_key,
)
from walletd.service_layer.posting import posting_time
from walletd.service_layer.tenants import Principal

ReversalAnswer = Callable[[Transaction], tuple[int, bytes]]

REVERSES_UNIQUE_CONSTRAINT = "transactions_reverses_transaction_id_key"

SELECT_REVERSAL_OF = """
SELECT id FROM transactions WHERE tenant_id = $1 AND reverses_transaction_id = $2
"""


def mirror_movement(original: Transaction) -> Movement:
    """The movement that undoes ``original``: from its credited to its debited wallet."""
    debited = [entry for entry in original.entries if entry.amount < 0]
    credited = [entry for entry in original.entries if entry.amount > 0]
    assert len(debited) == 1, f"transaction {original.id} has {len(debited)} debit entries"
    assert len(credited) == 1, f"transaction {original.id} has {len(credited)} credit entries"
    assert credited[0].amount == -debited[0].amount == original.amount
    return Movement(
        "reversal",
        credited[0].wallet_id,
        debited[0].wallet_id,
        original.amount,
        original.currency,
    )


def check_reversible(original: Transaction) -> None:
    """Only a posted, non-reversal transaction can be reversed."""
    if original.type == "reversal":
        raise ValidationFailed(
            f"transaction {original.id} is a reversal; reversals cannot be reversed"
        )
    if original.status != "posted":
        raise ValidationFailed(
            f"transaction {original.id} is {original.status}; only posted ones can be reversed"
        )


class ReversalService:
    def __init__(self, database: Database) -> None:
        self._database = database

    @contextlib.asynccontextmanager
    async def _work(
        self, original_id: UUID, request: IdempotentRequest | None, tenant_id: UUID
    ) -> AsyncIterator[UnitOfWork]:
        """A unit of work mapping unique violations: the key, or a racing reversal."""
        try:
            async with self._database.unit_of_work() as uow:
                await claim_key(uow.connection, tenant_id, request)
                yield uow
        except asyncpg.UniqueViolationError as error:
            if is_duplicate_key(error):
                raise DuplicateKey(request.key if request else "") from error
            if getattr(error, "constraint_name", None) == REVERSES_UNIQUE_CONSTRAINT:
                raise AlreadyReversed(f"transaction {original_id} is already reversed") from error
            raise

    async def reverse(
        self,
        principal: Principal,
        transaction_id: UUID,
        *,
        reason: str | None = None,
        request: IdempotentRequest | None = None,
        answer: ReversalAnswer | None = None,
    ) -> Transaction:
        """Post the mirror of ``transaction_id`` and log who did it; see the module doc."""
        tenant_id = principal.tenant_id
        async with self._work(transaction_id, request, tenant_id) as uow:
            connection = uow.connection
            original = await ledger_queries.get_transaction(connection, tenant_id, transaction_id)
            if original is None:
                raise NotFound(f"transaction {transaction_id} not found")
            check_reversible(original)
            movement = mirror_movement(original)
            wanted = [movement.source_id, movement.destination_id]
            states = await ledger_store.lock_wallets(connection, tenant_id, wanted)
            # Any other reversal of it locks the same wallets: this check is exact.
            await _check_not_reversed(connection, tenant_id, transaction_id)
            at = posting_time(list(states.values()))
            reversal = _post_reversal(original, movement, states, at)
            system_ids = frozenset(state.id for state in states.values() if state.is_system)
            rows = [request.row(*answer(reversal))] if request and answer else []
            changed = [states[wallet_id] for wallet_id in sorted(states)]
            await ledger_store.write_postings(
                connection,
                tenant_id,
                [reversal],
                changed,
                entry_events(reversal, system_ids),
                rows,
            )
            await admin_log.record_action(
                connection,
                tenant_id=tenant_id,
                key_id=principal.key_id,
                action="transaction.reverse",
                target_type="transaction",
                target_id=str(transaction_id),
                before={"status": original.status, "reversed_by": None},
                after=_audit_after(reversal, reason),
            )
            await uow.commit()
        return reversal


async def _check_not_reversed(
    connection: asyncpg.Connection, tenant_id: UUID, transaction_id: UUID
) -> None:
    existing = await connection.fetchval(SELECT_REVERSAL_OF, tenant_id, transaction_id)
    if existing is not None:
        raise AlreadyReversed(f"transaction {transaction_id} is already reversed by {existing}")


def _post_reversal(
    original: Transaction, movement: Movement, states: dict[UUID, WalletState], at: datetime
) -> Transaction:
    """Apply the mirror movement to ``states``; raise (changing nothing) when it may not."""
    for wallet_id in (movement.source_id, movement.destination_id):
        assert wallet_id in states, f"wallet {wallet_id} of {original.id} is missing"
    reversal_id = new_id()
    try:
        entries = post_movement(states, movement, reversal_id, at)
    except InsufficientFunds as error:
        raise InsufficientFunds(
            f"reversing transaction {original.id} would take wallet {movement.source_id}"
            f" below its floor: {error.detail}"
        ) from error
    return Transaction(
        id=reversal_id,
        tenant_id=original.tenant_id,
        type="reversal",
        status="posted",
        amount=original.amount,
        currency=original.currency,
        reference=None,
        metadata={},
        from_wallet_id=original.to_wallet_id,
        to_wallet_id=original.from_wallet_id,
        created_at=at,
        reverses_transaction_id=original.id,
        entries=tuple(entries),
    )


def _audit_after(reversal: Transaction, reason: str | None) -> dict[str, Any]:
    return {"status": "posted", "reversed_by": str(reversal.id), "reason": reason}

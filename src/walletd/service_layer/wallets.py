"""Wallet use cases: open, read, list, freeze, unfreeze, close, set limits.

Admin actions lock the wallet row (the same lock postings take), emit their
event through the outbox and write the admin audit log, all in one transaction; with
an ``Idempotency-Key``, the answer is stored in that transaction too.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import asyncpg

from walletd.adapters import admin_log, outbox_store, wallet_store
from walletd.adapters.postgres import Database
from walletd.domain.events import cloud_event
from walletd.domain.ledger import Limits, WalletStatus
from walletd.domain.records import Wallet
from walletd.errors import NotFound, WalletClosed, WalletNotEmpty
from walletd.ids import new_id
from walletd.service_layer.idempotency import IdempotentRequest, claim_key, store_answer
from walletd.service_layer.tenants import Principal

WalletAnswer = Callable[[Wallet], tuple[int, bytes]]


def wallet_event_data(wallet: Wallet, **extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "tenant_id": str(wallet.tenant_id),
        "wallet_id": str(wallet.id),
        "currency": wallet.currency,
        "status": wallet.status.value,
    }
    data.update(extra)
    return data


def wallet_snapshot(wallet: Wallet) -> dict[str, Any]:
    """What the admin log records of a wallet before and after a change."""
    return {
        "status": wallet.status.value,
        "balance": wallet.balance,
        "held_balance": wallet.held_balance,
        "limits": wallet.limits.to_json(),
    }


STATUS_AFTER = {
    "freeze": WalletStatus.FROZEN,
    "unfreeze": WalletStatus.ACTIVE,
    "close": WalletStatus.CLOSED,
}
EVENT_OF = {"freeze": "wallet.frozen", "unfreeze": "wallet.unfrozen", "close": "wallet.closed"}


async def _apply_status(
    connection: asyncpg.Connection,
    principal: Principal,
    before: Wallet,
    action: str,
    reason: str | None,
    at: datetime,
) -> Wallet:
    """Move the locked wallet ``before`` to its status after ``action``: the row, the
    event and the admin log entry; raise when the wallet cannot take that status."""
    wallet_id, target = before.id, STATUS_AFTER[action]
    assert before.status is not target
    if before.status is WalletStatus.CLOSED:
        raise WalletClosed(f"wallet {wallet_id} is closed")
    if target is WalletStatus.CLOSED and (before.balance != 0 or before.held_balance != 0):
        raise WalletNotEmpty(
            f"wallet {wallet_id} has balance {before.balance} and"
            f" {before.held_balance} held; both must be 0 to close it"
        )
    after = await wallet_store.set_status(connection, principal.tenant_id, wallet_id, target, at)
    assert after.status is target
    data = wallet_event_data(after, reason=reason)
    event = cloud_event(EVENT_OF[action], wallet_id, at, data)
    await outbox_store.add_events(connection, principal.tenant_id, [event])
    await admin_log.record_action(
        connection,
        tenant_id=principal.tenant_id,
        key_id=principal.key_id,
        action=f"wallet.{action}",
        target_type="wallet",
        target_id=str(wallet_id),
        before=wallet_snapshot(before),
        after={**wallet_snapshot(after), "reason": reason},
    )
    return after


class WalletService:
    def __init__(self, database: Database) -> None:
        self._database = database

    async def create(
        self,
        tenant_id: UUID,
        *,
        currency: str,
        owner_id: str | None,
        overdraft_limit: int,
        metadata: dict[str, Any],
        request: IdempotentRequest | None = None,
        answer: WalletAnswer | None = None,
    ) -> Wallet:
        at = datetime.now(UTC)
        async with self._database.unit_of_work() as uow:
            await claim_key(uow.connection, tenant_id, request)
            wallet = await wallet_store.insert_wallet(
                uow.connection,
                wallet_id=new_id(),
                tenant_id=tenant_id,
                currency=currency,
                owner_id=owner_id,
                overdraft_limit=overdraft_limit,
                metadata=metadata,
                at=at,
            )
            data = wallet_event_data(wallet, owner_id=owner_id, overdraft_limit=overdraft_limit)
            event = cloud_event("wallet.created", wallet.id, at, data)
            await outbox_store.add_events(uow.connection, tenant_id, [event])
            if request is not None and answer is not None:
                await store_answer(uow.connection, tenant_id, request.row(*answer(wallet)))
            await uow.commit()
        return wallet

    async def get(self, tenant_id: UUID, wallet_id: UUID) -> Wallet:
        async with self._database.connection() as connection:
            wallet = await wallet_store.get_wallet(connection, tenant_id, wallet_id)
        if wallet is None:
            raise NotFound(f"wallet {wallet_id} not found")
        return wallet

    async def list(
        self,
        tenant_id: UUID,
        owner_id: str | None,
        after: tuple[datetime, UUID] | None,
        limit: int,
    ) -> list[Wallet]:
        async with self._database.connection() as connection:
            return await wallet_store.list_wallets(connection, tenant_id, owner_id, after, limit)

    async def change_status(
        self,
        principal: Principal,
        wallet_id: UUID,
        action: str,
        reason: str | None,
        *,
        request: IdempotentRequest | None = None,
        answer: WalletAnswer | None = None,
    ) -> Wallet:
        """``freeze``, ``unfreeze`` or ``close``; a no-op when already in that state.

        With ``request``, ``answer(wallet)`` is stored under its key in the same
        transaction as the change; a no-op is answered, and stored, all the same.
        """
        target = STATUS_AFTER[action]
        at = datetime.now(UTC)
        async with self._database.unit_of_work() as uow:
            connection = uow.connection
            await claim_key(connection, principal.tenant_id, request)
            before = await wallet_store.get_wallet(
                connection, principal.tenant_id, wallet_id, lock=True
            )
            if before is None:
                raise NotFound(f"wallet {wallet_id} not found")
            after = before
            if before.status is not target:
                after = await _apply_status(connection, principal, before, action, reason, at)
            if request is not None and answer is not None:
                await store_answer(connection, principal.tenant_id, request.row(*answer(after)))
            await uow.commit()
        return after

    async def set_limits(self, principal: Principal, wallet_id: UUID, limits: Limits) -> Wallet:
        at = datetime.now(UTC)
        async with self._database.unit_of_work() as uow:
            connection = uow.connection
            before = await wallet_store.get_wallet(
                connection, principal.tenant_id, wallet_id, lock=True
            )
            if before is None:
                raise NotFound(f"wallet {wallet_id} not found")
            after = await wallet_store.set_limits(
                connection, principal.tenant_id, wallet_id, limits, at
            )
            await admin_log.record_action(
                connection,
                tenant_id=principal.tenant_id,
                key_id=principal.key_id,
                action="wallet.limits",
                target_type="wallet",
                target_id=str(wallet_id),
                before=before.limits.to_json(),
                after=after.limits.to_json(),
            )
            await uow.commit()
        return after

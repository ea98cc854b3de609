"""Read models of the ledger: transactions, holds, wallets as the engine returns them."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from walletd.domain.ledger import Entry, Limits, TransactionType, WalletStatus

TransactionStatus = Literal["posted", "pending_review", "rejected"]
HoldStatus = Literal["pending", "captured", "voided", "expired"]


@dataclass(frozen=True, slots=True)
class Wallet:
    id: UUID
    tenant_id: UUID
    currency: str
    owner_id: str | None
    is_system: bool
    status: WalletStatus
    balance: int
    held_balance: int
    overdraft_limit: int
    version: int
    limits: Limits
    metadata: dict[str, Any]
    created_at: datetime
    updated_at: datetime

    @property
    def available_balance(self) -> int:
        return self.balance - self.held_balance


@dataclass(frozen=True, slots=True)
class Transaction:
    id: UUID
    tenant_id: UUID
    type: TransactionType
    status: TransactionStatus
    amount: int
    currency: str
    reference: str | None
    metadata: dict[str, Any]
    from_wallet_id: UUID | None
    to_wallet_id: UUID | None
    created_at: datetime
    reverses_transaction_id: UUID | None = None
    hold_id: UUID | None = None
    review_rule: str | None = None
    entries: tuple[Entry, ...] = field(default=())


@dataclass(frozen=True, slots=True)
class Hold:
    id: UUID
    tenant_id: UUID
    wallet_id: UUID
    amount: int
    currency: str
    status: HoldStatus
    captured_amount: int | None
    transaction_id: UUID | None
    expires_at: datetime | None
    created_at: datetime

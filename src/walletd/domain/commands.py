"""Commands: what a client asks the ledger to do, already validated for shape."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from uuid import UUID


@dataclass(frozen=True, slots=True)
class Credit:
    """Money in from outside: the tenant's system wallet pays ``wallet_id``."""

    wallet_id: UUID
    amount: int
    currency: str
    reference: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Debit:
    """Money out to outside: ``wallet_id`` pays the tenant's system wallet."""

    wallet_id: UUID
    amount: int
    currency: str
    reference: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Transfer:
    """Money between two user wallets of one tenant."""

    from_wallet_id: UUID
    to_wallet_id: UUID
    amount: int
    currency: str
    reference: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


PostingCommand = Credit | Debit | Transfer

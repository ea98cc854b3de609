"""Commands: every change of a balance a client (or the expiry loop) can ask for.

Each is validated for shape at the edge (HTTP models, CLI) and given to the one engine
(:mod:`walletd.service_layer.engine`), which locks what it names, applies the rules of
:mod:`walletd.domain.book` and writes the outcome. There is no other way to move money,
reserve it or release it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal
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


@dataclass(frozen=True, slots=True)
class PlaceHold:
    """Reserve ``amount`` on ``wallet_id``: ``held_balance`` up, no entry."""

    wallet_id: UUID
    amount: int
    currency: str
    expires_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class CaptureHold:
    """Post ``amount`` (default: all) of a pending hold, to ``to_wallet_id`` or outside."""

    hold_id: UUID
    amount: int | None = None
    to_wallet_id: UUID | None = None


@dataclass(frozen=True, slots=True)
class VoidHold:
    """Release a pending hold whole; nothing is posted."""

    hold_id: UUID


@dataclass(frozen=True, slots=True)
class ExpireHold:
    """Release a pending hold whose ``expires_at`` has come (the expiry loop's command)."""

    hold_id: UUID


@dataclass(frozen=True, slots=True)
class Reverse:
    """Post the mirror of a posted transaction, once; ``key_id`` is the admin's key."""

    transaction_id: UUID
    key_id: UUID | None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class DecideReview:
    """Approve (post) or reject (release) a transaction pending review."""

    transaction_id: UUID
    decision: Literal["approve", "reject"]
    key_id: UUID | None
    reason: str | None = None


PostingCommand = Credit | Debit | Transfer
Command = (
    Credit | Debit | Transfer | PlaceHold | CaptureHold | VoidHold | ExpireHold | Reverse
) | DecideReview

"""Posting rules: how a movement of money changes wallets and which entries it writes.

Every movement takes ``amount`` from a source wallet and gives it to a destination
wallet: a credit comes from the tenant's system wallet for its currency, a debit
goes to it. All checks run before any state changes, so a rejected movement
leaves the wallets exactly as they were. The functions here are pure: the
service layer loads :class:`WalletState` under row locks, calls them, and writes
what they return.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import date, datetime
from enum import StrEnum
from typing import Any, Literal
from uuid import UUID

from walletd.domain.hashing import canonical_entry, chain_hash
from walletd.domain.money import checked_balance
from walletd.errors import (
    CurrencyMismatch,
    InsufficientFunds,
    LimitExceeded,
    SameWallet,
    WalletClosed,
    WalletFrozen,
)
from walletd.ids import new_id

TransactionType = Literal["credit", "debit", "transfer", "capture", "reversal"]
# Money leaving a user wallet by its owner's wish: limits apply, and it counts
# against the per-minute and daily totals.
DEBIT_TYPES = frozenset({"debit", "transfer", "capture"})


class WalletStatus(StrEnum):
    ACTIVE = "active"
    FROZEN = "frozen"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-wallet limits on money leaving it; ``None`` means no limit."""

    max_debit_amount: int | None = None
    daily_debit_amount: int | None = None
    max_debits_per_minute: int | None = None

    def to_json(self) -> dict[str, int | None]:
        return {
            "max_debit_amount": self.max_debit_amount,
            "daily_debit_amount": self.daily_debit_amount,
            "max_debits_per_minute": self.max_debits_per_minute,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Limits:
        return cls(
            max_debit_amount=data.get("max_debit_amount"),
            daily_debit_amount=data.get("daily_debit_amount"),
            max_debits_per_minute=data.get("max_debits_per_minute"),
        )


@dataclass(slots=True)
class WalletState:
    """A wallet as loaded under its row lock, changed in memory, then written back."""

    id: UUID
    tenant_id: UUID
    currency: str
    is_system: bool
    status: WalletStatus
    balance: int
    held_balance: int
    overdraft_limit: int
    version: int
    last_hash: bytes
    created_at: datetime
    updated_at: datetime
    limits: Limits = field(default_factory=Limits)
    debit_day: date | None = None
    debit_day_total: int = 0
    debits_last_minute: int = 0

    @property
    def available_balance(self) -> int:
        return self.balance - self.held_balance

    def snapshot(self) -> WalletState:
        """A shallow copy (every field is immutable); about a third of ``copy.copy``'s cost."""
        clone = object.__new__(WalletState)
        for name in _WALLET_STATE_FIELDS:
            setattr(clone, name, getattr(self, name))
        return clone


_WALLET_STATE_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(WalletState))


@dataclass(frozen=True, slots=True)
class Entry:
    """An entry computed by the rules, ready to be inserted."""

    id: UUID
    transaction_id: UUID
    wallet_id: UUID
    currency: str
    amount: int
    balance_after: int
    wallet_version: int
    hash: bytes
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Movement:
    """``amount`` of ``currency`` from ``source_id`` to ``destination_id``.

    ``release_held`` is the part of the source's ``held_balance`` freed by the same
    posting (a hold being captured, a reviewed transaction being approved).
    """

    type: TransactionType
    source_id: UUID
    destination_id: UUID
    amount: int
    currency: str
    release_held: int = 0


def counts_as_debit(movement: Movement) -> bool:
    """Money leaving a user wallet by the owner's wish: limits apply."""
    return movement.type in DEBIT_TYPES


def check_can_pay(wallet: WalletState, amount: int, currency: str, *, reversal: bool) -> None:
    """Raise unless ``wallet`` may send ``amount`` (status and currency only)."""
    if wallet.status is WalletStatus.CLOSED:
        raise WalletClosed(f"wallet {wallet.id} is closed")
    if wallet.status is WalletStatus.FROZEN and not reversal:
        raise WalletFrozen(f"wallet {wallet.id} is frozen: no money may leave it")
    if wallet.currency != currency:
        raise CurrencyMismatch(f"wallet {wallet.id} holds {wallet.currency}, not {currency}")


def check_can_receive(wallet: WalletState, currency: str) -> None:
    """Raise unless ``wallet`` may receive money in ``currency``."""
    if wallet.status is WalletStatus.CLOSED:
        raise WalletClosed(f"wallet {wallet.id} is closed")
    if wallet.currency != currency:
        raise CurrencyMismatch(f"wallet {wallet.id} holds {wallet.currency}, not {currency}")


def check_floor(wallet: WalletState, extra_out: int, released: int = 0) -> None:
    """Raise unless taking ``extra_out`` keeps ``available_balance >= -overdraft_limit``."""
    if wallet.is_system:
        return
    available_after = wallet.available_balance + released - extra_out
    if available_after < -wallet.overdraft_limit:
        raise InsufficientFunds(
            f"wallet {wallet.id} has {wallet.available_balance + released} available"
            f" (overdraft limit {wallet.overdraft_limit}); {extra_out} requested"
        )


def check_amount_limit(wallet: WalletState, amount: int) -> None:
    """``max_debit_amount``: applies to debits, transfers out, captures and holds."""
    limit = wallet.limits.max_debit_amount
    if limit is not None and amount > limit:
        raise LimitExceeded(f"max_debit_amount: {amount} is above the limit of {limit}")


def check_debit_limits(wallet: WalletState, amount: int, at: datetime) -> None:
    """All limits on money leaving ``wallet`` at ``at`` (UTC day for the daily one)."""
    check_amount_limit(wallet, amount)
    spent = wallet.debit_day_total if wallet.debit_day == at.date() else 0
    checked_balance(spent + amount, "daily debit total")  # a stored counter: bigint too
    daily = wallet.limits.daily_debit_amount
    if daily is not None and spent + amount > daily:
        raise LimitExceeded(
            f"daily_debit_amount: {spent} already sent today, {amount} more is above"
            f" the limit of {daily}"
        )
    per_minute = wallet.limits.max_debits_per_minute
    if per_minute is not None and wallet.debits_last_minute + 1 > per_minute:
        raise LimitExceeded(
            f"max_debits_per_minute: {wallet.debits_last_minute} debits in the last minute,"
            f" the limit is {per_minute}"
        )


def check_movement(
    source: WalletState, destination: WalletState, movement: Movement, at: datetime
) -> None:
    """Every rule a movement must pass; raises the first one broken."""
    if source.id == destination.id:
        raise SameWallet("source and destination are the same wallet")
    reversal = movement.type == "reversal"
    check_can_pay(source, movement.amount, movement.currency, reversal=reversal)
    check_can_receive(destination, movement.currency)
    if counts_as_debit(movement) and not source.is_system:
        check_debit_limits(source, movement.amount, at)
    check_floor(source, movement.amount, released=movement.release_held)
    checked_balance(source.balance - movement.amount)
    checked_balance(destination.balance + movement.amount)


def append_entry(wallet: WalletState, transaction_id: UUID, amount: int, at: datetime) -> Entry:
    """Add one entry to ``wallet``'s chain and return it; the wallet moves on."""
    entry_id = new_id()
    balance_after = checked_balance(wallet.balance + amount)
    version = wallet.version + 1
    digest = chain_hash(
        wallet.last_hash,
        canonical_entry(
            entry_id=entry_id,
            transaction_id=transaction_id,
            wallet_id=wallet.id,
            currency=wallet.currency,
            amount=amount,
            balance_after=balance_after,
            wallet_version=version,
            created_at=at,
        ),
    )
    wallet.balance, wallet.version, wallet.last_hash = balance_after, version, digest
    wallet.updated_at = at
    return Entry(
        entry_id,
        transaction_id,
        wallet.id,
        wallet.currency,
        amount,
        balance_after,
        version,
        digest,
        at,
    )


def record_debit(wallet: WalletState, amount: int, at: datetime) -> None:
    """Count ``amount`` against the wallet's daily and per-minute limits."""
    today = at.date()
    if wallet.debit_day != today:
        wallet.debit_day, wallet.debit_day_total = today, 0
    wallet.debit_day_total += amount
    wallet.debits_last_minute += 1


def post_movement(
    wallets: dict[UUID, WalletState], movement: Movement, transaction_id: UUID, at: datetime
) -> list[Entry]:
    """Check and apply ``movement``; on any error nothing in ``wallets`` has changed."""
    source, destination = wallets[movement.source_id], wallets[movement.destination_id]
    assert 0 <= movement.release_held <= source.held_balance, "release more than is held"
    check_movement(source, destination, movement, at)
    source.held_balance -= movement.release_held
    entries = [
        append_entry(source, transaction_id, -movement.amount, at),
        append_entry(destination, transaction_id, movement.amount, at),
    ]
    if counts_as_debit(movement) and not source.is_system:
        record_debit(source, movement.amount, at)
    return entries


def place_hold(wallet: WalletState, amount: int, currency: str, at: datetime) -> None:
    """Reserve ``amount``: ``held_balance`` up, ``balance`` unchanged, no entry."""
    check_can_pay(wallet, amount, currency, reversal=False)
    check_amount_limit(wallet, amount)
    check_floor(wallet, amount)
    wallet.held_balance = checked_balance(wallet.held_balance + amount, "held balance")
    wallet.updated_at = max(wallet.updated_at, at)


def release_hold(wallet: WalletState, amount: int, at: datetime) -> None:
    """Give back ``amount`` of reserved funds."""
    assert 0 < amount <= wallet.held_balance
    wallet.held_balance -= amount
    wallet.updated_at = max(wallet.updated_at, at)


def hold_for_review(wallets: dict[UUID, WalletState], movement: Movement, at: datetime) -> None:
    """Reserve a movement sent to review: every posting check, then its amount held.

    ``movement.release_held`` (a hold being captured) is freed and ``movement.amount``
    stays held for the review. Limits are checked now but only counted when the
    review is approved and posted.
    """
    source, destination = wallets[movement.source_id], wallets[movement.destination_id]
    assert 0 <= movement.release_held <= source.held_balance, "release more than is held"
    check_movement(source, destination, movement, at)
    held = source.held_balance - movement.release_held + movement.amount
    source.held_balance = checked_balance(held, "held balance")
    source.updated_at = max(source.updated_at, at)

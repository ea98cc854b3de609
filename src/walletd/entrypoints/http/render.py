"""Records to JSON bytes: the exact bodies clients see and idempotency replays.

Ids stay ``UUID`` objects in these dicts: :func:`dumps` (:mod:`walletd.jsontext`) writes
them in their canonical text form, faster than ``str()`` would.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from walletd import jsontext
from walletd.domain.hashing import canonical_timestamp
from walletd.domain.ledger import Entry
from walletd.domain.records import Hold, Transaction, Wallet


def timestamp(moment: datetime | None) -> str | None:
    return canonical_timestamp(moment) if moment is not None else None


def wallet_json(wallet: Wallet) -> dict[str, Any]:
    return {
        "id": wallet.id,
        "currency": wallet.currency,
        "owner_id": wallet.owner_id,
        "status": wallet.status.value,
        "balance": wallet.balance,
        "held_balance": wallet.held_balance,
        "available_balance": wallet.available_balance,
        "overdraft_limit": wallet.overdraft_limit,
        "version": wallet.version,
        "limits": wallet.limits.to_json(),
        "metadata": wallet.metadata,
        "created_at": timestamp(wallet.created_at),
        "updated_at": timestamp(wallet.updated_at),
    }


def entry_json(entry: Entry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "transaction_id": entry.transaction_id,
        "wallet_id": entry.wallet_id,
        "amount": entry.amount,
        "balance_after": entry.balance_after,
        "wallet_version": entry.wallet_version,
        "created_at": timestamp(entry.created_at),
    }


def transaction_json(transaction: Transaction) -> dict[str, Any]:
    return {
        "id": transaction.id,
        "type": transaction.type,
        "status": transaction.status,
        "amount": transaction.amount,
        "currency": transaction.currency,
        "reference": transaction.reference,
        "metadata": transaction.metadata,
        "reverses_transaction_id": transaction.reverses_transaction_id,
        "entries": [entry_json(entry) for entry in transaction.entries],
        "created_at": timestamp(transaction.created_at),
    }


def hold_json(hold: Hold) -> dict[str, Any]:
    return {
        "id": hold.id,
        "wallet_id": hold.wallet_id,
        "amount": hold.amount,
        "currency": hold.currency,
        "status": hold.status,
        "captured_amount": hold.captured_amount,
        "transaction_id": hold.transaction_id,
        "expires_at": timestamp(hold.expires_at),
        "created_at": timestamp(hold.created_at),
    }


def dumps(value: Any) -> bytes:
    return jsontext.dumps(value)

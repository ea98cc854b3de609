"""CloudEvents 1.0 for the outbox: what the outside world learns about each change.

Entry events (``wallet.credited`` / ``wallet.debited``) are one per entry, system
wallets included; the message key is always the wallet id, so one wallet's events
stay in one partition and in ``wallet_version`` order. Ids in payloads may stay ``UUID``
objects: payloads are written by :mod:`walletd.jsontext`, as canonical text.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from walletd.domain.hashing import canonical_timestamp
from walletd.domain.records import Transaction
from walletd.ids import new_id

EVENT_SOURCE = "walletd"


@dataclass(frozen=True, slots=True)
class OutboxEvent:
    event_id: UUID
    message_key: str
    event_type: str
    payload: dict[str, Any]


def cloud_event(event_type: str, subject: UUID, at: datetime, data: dict[str, Any]) -> OutboxEvent:
    """Wrap ``data`` in a CloudEvents 1.0 envelope keyed by ``subject`` (a wallet id)."""
    event_id = new_id()
    key = str(subject)
    payload = {
        "specversion": "1.0",
        "id": event_id,
        "source": EVENT_SOURCE,
        "type": event_type,
        "subject": key,
        "time": canonical_timestamp(at),
        "datacontenttype": "application/json",
        "data": data,
    }
    return OutboxEvent(event_id, key, event_type, payload)


def entry_events(transaction: Transaction, system_wallet_ids: frozenset[UUID]) -> list[OutboxEvent]:
    """One event per entry of a posted transaction, in entry order."""
    wallets = [entry.wallet_id for entry in transaction.entries]
    user_wallets = [wallet for wallet in wallets if wallet not in system_wallet_ids]
    two_user_wallets = len(user_wallets) == 2 and user_wallets[0] != user_wallets[1]
    events = []
    for entry in transaction.entries:
        counterparty = None
        if two_user_wallets:
            counterparty = (
                user_wallets[1] if entry.wallet_id == user_wallets[0] else user_wallets[0]
            )
        data = {
            "tenant_id": transaction.tenant_id,
            "wallet_id": entry.wallet_id,
            "transaction_id": transaction.id,
            "transaction_type": transaction.type,
            "amount": entry.amount,
            "currency": entry.currency,
            "balance_after": entry.balance_after,
            "wallet_version": entry.wallet_version,
            "counterparty_wallet_id": counterparty,
        }
        event_type = "wallet.credited" if entry.amount > 0 else "wallet.debited"
        events.append(cloud_event(event_type, entry.wallet_id, entry.created_at, data))
    return events

"""CloudEvents 1.0 for the outbox: what the outside world learns about each change.

Entry events (``wallet.credited`` / ``wallet.debited``) are one per entry, system
wallets included; the message key is always the wallet id, so one wallet's events
stay in one partition and in ``wallet_version`` order. A posted transaction stores
them as ONE outbox row (:func:`posting_event`), which the relay expands. Ids in
payloads may stay ``UUID`` objects: payloads are written by :mod:`walletd.jsontext`,
as canonical text.
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
# The stored type of a posted transaction's row: never published as such, the relay
# publishes the entry events it expands into (:func:`expand_posting`).
POSTING_ROW = "ledger.posted"


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


def posting_event(transaction: Transaction, system_wallet_ids: frozenset[UUID]) -> OutboxEvent:
    """The ONE outbox row of a posted transaction's entry events.

    Stored compactly (one row and one small payload per transaction, not one per
    entry) and expanded by the relay, with :func:`expand_posting`, into one CloudEvent
    per entry. The id of an entry's event is the entry's id, so an expansion (a retry,
    a replay) always gives the same events.
    """
    wallets = [entry.wallet_id for entry in transaction.entries]
    user_wallets = [wallet for wallet in wallets if wallet not in system_wallet_ids]
    two_user_wallets = len(user_wallets) == 2 and user_wallets[0] != user_wallets[1]
    entries = []
    for entry in transaction.entries:
        counterparty = None
        if two_user_wallets:
            counterparty = (
                user_wallets[1] if entry.wallet_id == user_wallets[0] else user_wallets[0]
            )
        entries.append(
            [
                entry.id,
                entry.wallet_id,
                entry.amount,
                entry.currency,
                entry.balance_after,
                entry.wallet_version,
                counterparty,
            ]
        )
    created_at = transaction.entries[0].created_at
    assert all(entry.created_at == created_at for entry in transaction.entries)
    payload = {
        "tenant_id": transaction.tenant_id,
        "transaction_id": transaction.id,
        "transaction_type": transaction.type,
        "time": canonical_timestamp(created_at),
        "entries": entries,
    }
    return OutboxEvent(transaction.id, str(wallets[0]), POSTING_ROW, payload)


def expand_posting(payload: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The (message key, CloudEvent) of each entry of a stored posting row, in order."""
    events = []
    for entry_id, wallet_id, amount, currency, balance_after, version, counterparty in payload[
        "entries"
    ]:
        key = str(wallet_id)
        event = {
            "specversion": "1.0",
            "id": str(entry_id),
            "source": EVENT_SOURCE,
            "type": "wallet.credited" if amount > 0 else "wallet.debited",
            "subject": key,
            "time": payload["time"],
            "datacontenttype": "application/json",
            "data": {
                "tenant_id": str(payload["tenant_id"]),
                "wallet_id": key,
                "transaction_id": str(payload["transaction_id"]),
                "transaction_type": payload["transaction_type"],
                "amount": amount,
                "currency": currency,
                "balance_after": balance_after,
                "wallet_version": version,
                "counterparty_wallet_id": None if counterparty is None else str(counterparty),
            },
        }
        events.append((key, event))
    return events

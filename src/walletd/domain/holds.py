"""Holds as the outside world sees them: their events, and when one is due to expire."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from walletd.domain.events import OutboxEvent, cloud_event
from walletd.domain.records import Hold


def hold_event(event_type: str, hold: Hold, at: datetime) -> OutboxEvent:
    """``hold.created`` / ``captured`` / ``voided`` / ``expired``, keyed by the wallet."""
    data: dict[str, Any] = {
        "tenant_id": str(hold.tenant_id),
        "hold_id": str(hold.id),
        "wallet_id": str(hold.wallet_id),
        "status": hold.status,
        "amount": hold.amount,
        "currency": hold.currency,
        "captured_amount": hold.captured_amount,
        "transaction_id": str(hold.transaction_id) if hold.transaction_id else None,
    }
    return cloud_event(event_type, hold.wallet_id, at, data)


def is_due(hold: Hold, at: datetime) -> bool:
    """A pending hold whose ``expires_at`` has come: it must be released, not used."""
    return hold.status == "pending" and hold.expires_at is not None and hold.expires_at <= at

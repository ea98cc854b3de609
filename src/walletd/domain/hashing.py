"""The per-wallet hash chain: ``hash = SHA-256(previous hash ‖ canonical entry)``.

The canonical form is a fixed, ASCII, ``|``-separated line so that any reader
(the engine, ``walletd audit``, an outside auditor) recomputes the same bytes.
"""

from __future__ import annotations

import functools
import hashlib
from datetime import UTC, datetime
from uuid import UUID

GENESIS_HASH = bytes(32)


@functools.lru_cache(maxsize=4096)  # a group's entries, events and answers share one moment
def canonical_timestamp(moment: datetime) -> str:
    """RFC 3339 UTC with microseconds, e.g. ``2026-11-24T12:00:00.123456Z``."""
    utc = moment.astimezone(UTC)
    return f"{utc.year:04d}-" + utc.strftime("%m-%dT%H:%M:%S.%fZ")


def canonical_entry(
    *,
    entry_id: UUID,
    transaction_id: UUID,
    wallet_id: UUID,
    currency: str,
    amount: int,
    balance_after: int,
    wallet_version: int,
    created_at: datetime,
) -> bytes:
    """The bytes an entry's hash covers."""
    fields = (
        str(entry_id),
        str(transaction_id),
        str(wallet_id),
        currency,
        str(amount),
        str(balance_after),
        str(wallet_version),
        canonical_timestamp(created_at),
    )
    return "|".join(fields).encode("ascii")


def chain_hash(previous_hash: bytes, canonical: bytes) -> bytes:
    """The next link of a wallet's chain."""
    assert len(previous_hash) == 32
    return hashlib.sha256(previous_hash + canonical).digest()

"""Idempotency records: the stored first answer to a request, keyed per tenant.

PostgreSQL decides: the record is inserted in the same transaction as the change it
answers, under the ``(tenant_id, key)`` primary key, so a key can only ever be
bound to one outcome. A duplicate insert surfaces as :class:`DuplicateKey`; the
HTTP layer then replays the stored answer (or refuses a reused key).

Two helpers complete the picture: :func:`claim_key`, the database's own "still running"
check used when Redis cannot say (see docs/idempotency.md), and the pruning job that
deletes keys older than the retention, in bounded batches, from one process at a time.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final
from uuid import UUID

import asyncpg
import orjson
import structlog
from prometheus_client import Counter

from walletd.adapters.ledger_store import IdempotencyRow
from walletd.adapters.postgres import Database
from walletd.errors import IdempotencyKeyInUse, Unavailable

logger = structlog.get_logger("walletd.idempotency")

MIN_RETENTION_SECONDS: Final = 24 * 3600.0
PRUNE_BATCH_SIZE: Final = 1000
PRUNE_MAX_BATCHES: Final = 100  # at most 100,000 keys per run; the next run continues
PRUNE_INTERVAL_SECONDS: Final = 300.0
# pg_try_advisory_xact_lock key of the pruner: "wdidprun" in ASCII.
PRUNE_LOCK_KEY: Final = int.from_bytes(b"wdidprun", "big")
KEY_CLAIM_NAMESPACE: Final = "walletd.idempotency"

KEYS_PRUNED = Counter(
    "walletd_idempotency_keys_pruned", "Idempotency keys deleted after their retention."
)

SELECT_KEY = """
SELECT method, path, request_hash, status_code, response_body, created_at
FROM idempotency_keys WHERE tenant_id = $1 AND key = $2
"""

INSERT_KEY = """
INSERT INTO idempotency_keys (tenant_id, key, method, path, request_hash, status_code,
                              response_body)
VALUES ($1, $2, $3, $4, $5, $6, $7)
"""

# Age is measured on the database clock, the clock that wrote created_at.
PRUNE_KEYS = """
DELETE FROM idempotency_keys
WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM idempotency_keys
    WHERE created_at < clock_timestamp() - make_interval(secs => $1)
    LIMIT $2
))
"""

TRY_PRUNE_LOCK = "SELECT pg_try_advisory_xact_lock($1)"

# Held until the claiming transaction ends: commit or rollback releases it, and so
# does a dropped connection, so a crashed request never leaves its key locked.
CLAIM_KEY = "SELECT pg_try_advisory_xact_lock(hashtextextended($1, 0))"


class DuplicateKey(Exception):
    """The key was already bound to an answer (or is being bound right now)."""


def request_fingerprint(method: str, path: str, body: Any) -> bytes:
    """SHA-256 of the method, the path and the canonical (sorted-keys) JSON body."""
    canonical = orjson.dumps(body, option=orjson.OPT_SORT_KEYS) if body is not None else b""
    return hashlib.sha256(method.encode() + b" " + path.encode() + b"\n" + canonical).digest()


@dataclass(frozen=True, slots=True)
class IdempotentRequest:
    """A request that carries an ``Idempotency-Key``."""

    key: str
    method: str
    path: str
    request_hash: bytes
    # Set when Redis could not lock the key: the database transaction claims it instead.
    claim_in_database: bool = False

    def row(self, status_code: int, body: bytes) -> IdempotencyRow:
        return IdempotencyRow(
            self.key, self.method, self.path, self.request_hash, status_code, body
        )


@dataclass(frozen=True, slots=True)
class StoredAnswer:
    method: str
    path: str
    request_hash: bytes
    status_code: int
    body: bytes


Renderer = Callable[[Sequence[Any]], tuple[int, bytes]]


def is_duplicate_key(error: BaseException) -> bool:
    return (
        isinstance(error, asyncpg.UniqueViolationError)
        and getattr(error, "constraint_name", None) == "idempotency_keys_pkey"
    )


async def load_answer(
    connection: asyncpg.Connection, tenant_id: UUID, key: str
) -> StoredAnswer | None:
    row = await connection.fetchrow(SELECT_KEY, tenant_id, key)
    if row is None:
        return None
    return StoredAnswer(
        row["method"],
        row["path"],
        bytes(row["request_hash"]),
        row["status_code"],
        bytes(row["response_body"]),
    )


async def store_answer(
    connection: asyncpg.Connection, tenant_id: UUID, row: IdempotencyRow
) -> None:
    """Insert the answer; raise :class:`DuplicateKey` when the key is taken."""
    try:
        await connection.execute(
            INSERT_KEY,
            tenant_id,
            row.key,
            row.method,
            row.path,
            row.request_hash,
            row.status_code,
            row.response_body,
        )
    except asyncpg.UniqueViolationError as error:
        raise DuplicateKey(row.key) from error


async def claim_key(
    connection: asyncpg.Connection, tenant_id: UUID, request: IdempotentRequest | None
) -> None:
    """Call first in the transaction that stores the answer; 409 while another holds the key.

    A no-op (no round trip) unless ``request.claim_in_database``: with Redis healthy,
    its lock already answered "still running".
    """
    if request is None or not request.claim_in_database:
        return
    claim = f"{KEY_CLAIM_NAMESPACE}:{tenant_id}:{request.key}"
    if not await connection.fetchval(CLAIM_KEY, claim):
        raise IdempotencyKeyInUse("the first request with this key has not finished; retry")


async def prune_expired_keys(
    database: Database,
    retention_seconds: float,
    *,
    batch_size: int = PRUNE_BATCH_SIZE,
    max_batches: int = PRUNE_MAX_BATCHES,
) -> int:
    """Delete keys older than ``retention_seconds``; return how many were deleted.

    Each batch is one short transaction holding the pruner's advisory lock; when
    another process holds it, this one stops (it is pruning already).
    """
    assert retention_seconds >= MIN_RETENTION_SECONDS, "keys live at least 24 h (SPEC 4)"
    assert 1 <= batch_size <= 10_000
    assert 1 <= max_batches <= 10_000
    deleted_total = 0
    for _ in range(max_batches):
        async with database.unit_of_work() as uow:
            if not await uow.connection.fetchval(TRY_PRUNE_LOCK, PRUNE_LOCK_KEY):
                break
            status = await uow.connection.execute(PRUNE_KEYS, retention_seconds, batch_size)
            await uow.commit()
        deleted = int(status.rsplit(" ", 1)[-1])
        assert 0 <= deleted <= batch_size
        deleted_total += deleted
        if deleted < batch_size:
            break
    KEYS_PRUNED.inc(deleted_total)
    return deleted_total


async def run_pruner(
    database: Database,
    retention_seconds: float,
    *,
    interval_seconds: float = PRUNE_INTERVAL_SECONDS,
) -> None:
    """Prune every ``interval_seconds`` (jittered, so workers spread out) until cancelled."""
    assert 1 <= interval_seconds <= 86_400
    await asyncio.sleep(random.uniform(0.1, 1.0) * interval_seconds)
    while True:
        try:
            deleted = await prune_expired_keys(database, retention_seconds)
        except (Unavailable, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            # The next run retries; keys only get older, nothing is lost by waiting.
            logger.warning("idempotency_prune_failed", error=f"{type(error).__name__}: {error}")
        else:
            if deleted:
                logger.info("idempotency_keys_pruned", deleted=deleted)
        await asyncio.sleep(random.uniform(0.9, 1.1) * interval_seconds)

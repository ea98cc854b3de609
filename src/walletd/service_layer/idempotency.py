"""Idempotency records: the stored first answer to a request, keyed per tenant.

PostgreSQL decides: the record is inserted in the same transaction as the change it
answers, under the ``(tenant_id, key)`` primary key, so a key can only ever be
bound to one outcome. A duplicate insert surfaces as :class:`DuplicateKey`; the
HTTP layer then replays the stored answer (or refuses a reused key).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import asyncpg
import orjson

from walletd.adapters.ledger_store import IdempotencyRow

SELECT_KEY = """
SELECT method, path, request_hash, status_code, response_body, created_at
FROM idempotency_keys WHERE tenant_id = $1 AND key = $2
"""

INSERT_KEY = """
INSERT INTO idempotency_keys (tenant_id, key, method, path, request_hash, status_code,
                              response_body)
VALUES ($1, $2, $3, $4, $5, $6, $7)
"""

PRUNE_KEYS = """
DELETE FROM idempotency_keys
WHERE ctid = ANY(ARRAY(SELECT ctid FROM idempotency_keys WHERE created_at < $1 LIMIT $2))
"""


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
        row["method"], row["path"], bytes(row["request_hash"]), row["status_code"],
        bytes(row["response_body"]),
    )


async def store_answer(
    connection: asyncpg.Connection, tenant_id: UUID, row: IdempotencyRow
) -> None:
    """Insert the answer; raise :class:`DuplicateKey` when the key is taken."""
    try:
        await connection.execute(
            INSERT_KEY, tenant_id, row.key, row.method, row.path, row.request_hash,
            row.status_code, row.response_body,
        )
    except asyncpg.UniqueViolationError as error:
        raise DuplicateKey(row.key) from error

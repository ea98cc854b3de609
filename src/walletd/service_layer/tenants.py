"""Tenants and API keys: a key belongs to one tenant and carries scopes.

A secret looks like ``wdk_<key id>_<random>``; only SHA-256 of the random part is
stored, so a database dump reveals no usable key. The key id lets a lookup hit one
row by primary key, and the hash is compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from uuid import UUID

import asyncpg

from walletd.errors import Unauthorized, ValidationFailed
from walletd.ids import new_id

SCOPES = ("read", "write", "admin")
KEY_PREFIX = "wdk"

ENSURE_TENANT = """
WITH inserted AS (
    INSERT INTO tenants (id, name) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING RETURNING id
)
SELECT id FROM inserted UNION ALL SELECT id FROM tenants WHERE name = $2 LIMIT 1
"""
INSERT_KEY = "INSERT INTO api_keys (id, tenant_id, secret_hash, scopes) VALUES ($1, $2, $3, $4)"
# The admin audit record of a new key (key_id NULL: created from the CLI). JSON is built
# by the server so that this works on a plain asyncpg connection without the pool's codec.
AUDIT_KEY_CREATED = """
INSERT INTO audit_log (tenant_id, key_id, action, target_type, target_id, before, after)
VALUES ($1, NULL, 'api_key.create', 'api_key', $2, NULL, jsonb_build_object('scopes', $3::text[]))
"""
SELECT_KEY = """
SELECT tenant_id, secret_hash, scopes FROM api_keys WHERE id = $1 AND revoked_at IS NULL
"""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the key id, its tenant and its scopes."""

    key_id: UUID
    tenant_id: UUID
    scopes: frozenset[str]


@dataclass(frozen=True, slots=True)
class NewKey:
    key_id: UUID
    tenant_id: UUID
    scopes: tuple[str, ...]
    secret: str


def parse_scopes(text: str) -> tuple[str, ...]:
    scopes = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    unknown = [scope for scope in scopes if scope not in SCOPES]
    if not scopes or unknown:
        raise ValidationFailed(f"scopes must be a comma-separated subset of {','.join(SCOPES)}")
    return scopes


def _hash_secret(random_part: str) -> bytes:
    return hashlib.sha256(random_part.encode()).digest()


async def create_api_key(
    connection: asyncpg.Connection, tenant_name: str, scopes: Sequence[str]
) -> NewKey:
    """Create ``tenant_name`` on first use and a new key for it."""
    if not 1 <= len(tenant_name) <= 200:
        raise ValidationFailed("tenant name must be 1 to 200 characters")
    async with connection.transaction():
        tenant_id: UUID = await connection.fetchval(ENSURE_TENANT, new_id(), tenant_name)
        key_id = new_id()
        random_part = secrets.token_urlsafe(32)
        await connection.execute(
            INSERT_KEY, key_id, tenant_id, _hash_secret(random_part), list(scopes)
        )
        await connection.execute(AUDIT_KEY_CREATED, tenant_id, str(key_id), list(scopes))
    return NewKey(key_id, tenant_id, tuple(scopes), f"{KEY_PREFIX}_{key_id.hex}_{random_part}")


def split_secret(secret: str) -> tuple[UUID, str]:
    """``wdk_<hex id>_<random>`` → (id, random); :class:`Unauthorized` when malformed."""
    parts = secret.split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_PREFIX or len(parts[1]) != 32:
        raise Unauthorized("invalid API key")
    try:
        return UUID(hex=parts[1]), parts[2]
    except ValueError as error:
        raise Unauthorized("invalid API key") from error


async def authenticate(connection: asyncpg.Connection, secret: str) -> Principal:
    key_id, random_part = split_secret(secret)
    row = await connection.fetchrow(SELECT_KEY, key_id)
    if row is None or not hmac.compare_digest(bytes(row["secret_hash"]), _hash_secret(random_part)):
        raise Unauthorized("invalid API key")
    return Principal(key_id, row["tenant_id"], frozenset(row["scopes"]))

"""The API-key cache against real PostgreSQL: one lookup at a time, refreshed ahead.

Every request authenticates its key; the principal is cached for 5 s. When it expired
under steady traffic, every request in flight looked the key up at once, and on the
lean path each fell back to the full FastAPI route: a stall every five seconds.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest

from walletd.adapters.postgres import Database
from walletd.errors import Unauthorized
from walletd.service_layer import key_cache, tenants
from walletd.service_layer.key_cache import AUTH_CACHE_SECONDS, KeyCache

pytestmark = pytest.mark.integration


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    db = Database(database_url, min_size=1, max_size=4)
    await db.connect()
    try:
        yield db
    finally:
        await db.close()


@pytest.fixture
def services(database: Database) -> KeyCache:
    return KeyCache(database)


@pytest.fixture
def lookups(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Secrets looked up in the database (the real lookup still runs)."""
    seen: list[str] = []
    real = tenants.authenticate

    async def counted(connection: object, secret: str) -> tenants.Principal:
        seen.append(secret)
        return await real(connection, secret)  # type: ignore[arg-type]

    monkeypatch.setattr(key_cache.tenants, "authenticate", counted)
    return seen


async def new_secret(services: KeyCache) -> str:
    async with services._database.connection() as connection:
        key = await tenants.create_api_key(connection, f"auth-{uuid.uuid4().hex[:8]}", ["write"])
    return key.secret


async def test_concurrent_requests_share_one_lookup(services: KeyCache, lookups: list[str]) -> None:
    secret = await new_secret(services)
    principals = await asyncio.gather(*(services.authenticate(secret) for _ in range(50)))
    assert len({p.key_id for p in principals}) == 1
    assert lookups == [secret]


async def test_a_key_in_use_is_refreshed_before_it_expires(
    services: KeyCache, lookups: list[str]
) -> None:
    secret = await new_secret(services)
    principal = await services.authenticate(secret)
    expires = services.expiry(secret)
    assert expires is not None
    # Into the last second: the cached answer still serves, and one lookup starts.
    services.set_expiry(secret, time.monotonic() + 0.5)
    assert [services.cached_principal(secret) for _ in range(20)] == [principal] * 20
    await asyncio.sleep(0.2)
    assert lookups == [secret, secret]
    renewed = services.expiry(secret)
    assert renewed is not None
    assert renewed >= expires and renewed > time.monotonic() + AUTH_CACHE_SECONDS - 1


async def test_a_key_revoked_meanwhile_is_dropped_by_the_refresh(services: KeyCache) -> None:
    secret = await new_secret(services)
    principal = await services.authenticate(secret)
    async with services._database.connection() as connection:
        await connection.execute(
            "UPDATE api_keys SET revoked_at = now() WHERE id = $1", principal.key_id
        )
    services.set_expiry(secret, time.monotonic() + 0.5)
    assert services.cached_principal(secret) == principal  # starts the refresh
    await asyncio.sleep(0.2)
    assert services.cached_principal(secret) is None
    with pytest.raises(Unauthorized):
        await services.authenticate(secret)

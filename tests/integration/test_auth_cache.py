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

from walletd.entrypoints.http import deps
from walletd.entrypoints.http.app import build_services
from walletd.entrypoints.http.deps import AUTH_CACHE_SECONDS, Services
from walletd.errors import Unauthorized
from walletd.service_layer import tenants
from walletd.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture
async def services(database_url: str) -> AsyncIterator[Services]:
    built = build_services(Settings(database_url=database_url))
    await built.database.connect()
    try:
        yield built
    finally:
        await built.database.close()


@pytest.fixture
def lookups(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Secrets looked up in the database (the real lookup still runs)."""
    seen: list[str] = []
    real = tenants.authenticate

    async def counted(connection: object, secret: str) -> tenants.Principal:
        seen.append(secret)
        return await real(connection, secret)  # type: ignore[arg-type]

    monkeypatch.setattr(deps.tenants, "authenticate", counted)
    return seen


async def new_secret(services: Services) -> str:
    async with services.database.connection() as connection:
        key = await tenants.create_api_key(connection, f"auth-{uuid.uuid4().hex[:8]}", ["write"])
    return key.secret


async def test_concurrent_requests_share_one_lookup(services: Services, lookups: list[str]) -> None:
    secret = await new_secret(services)
    principals = await asyncio.gather(*(services.authenticate(secret) for _ in range(50)))
    assert len({p.key_id for p in principals}) == 1
    assert lookups == [secret]


async def test_a_key_in_use_is_refreshed_before_it_expires(
    services: Services, lookups: list[str]
) -> None:
    secret = await new_secret(services)
    principal = await services.authenticate(secret)
    expires, _ = services._auth_cache[secret]
    # Into the last second: the cached answer still serves, and one lookup starts.
    services._auth_cache[secret] = (time.monotonic() + 0.5, principal)
    assert [services.cached_principal(secret) for _ in range(20)] == [principal] * 20
    await asyncio.sleep(0.2)
    assert lookups == [secret, secret]
    renewed, _ = services._auth_cache[secret]
    assert renewed >= expires and renewed > time.monotonic() + AUTH_CACHE_SECONDS - 1


async def test_a_key_revoked_meanwhile_is_dropped_by_the_refresh(services: Services) -> None:
    secret = await new_secret(services)
    principal = await services.authenticate(secret)
    async with services.database.connection() as connection:
        await connection.execute(
            "UPDATE api_keys SET revoked_at = now() WHERE id = $1", principal.key_id
        )
    services._auth_cache[secret] = (time.monotonic() + 0.5, principal)
    assert services.cached_principal(secret) == principal  # starts the refresh
    await asyncio.sleep(0.2)
    assert services.cached_principal(secret) is None
    with pytest.raises(Unauthorized):
        await services.authenticate(secret)

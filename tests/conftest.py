"""Shared fixtures: one private stack of real services per test session.

``stack``/``endpoints`` (tests/support/services.py) start PostgreSQL, a Redis-compatible
server and a Kafka-compatible broker once; ``database_url`` is a fresh database on
that server, migrated once; ``database`` is a connected pool for one test; tenants
isolate tests from each other.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from uuid import uuid4

import asyncpg
import pytest

from tests.support.api import ApiHarness, api_harness
from walletd.adapters.embedded import ServiceEndpoints
from walletd.adapters.migrations import upgrade
from walletd.adapters.postgres import Database
from walletd.settings import Settings

pytest_plugins = ["tests.support.services"]


def _admin_url(database_url: str) -> str:
    base, _, _ = database_url.rpartition("/")
    return f"{base}/postgres"


@pytest.fixture(scope="session")
def database_url(endpoints: ServiceEndpoints) -> Iterator[str]:
    """A fresh, migrated database for this session."""
    import asyncio

    name = f"walletd_test_{uuid4().hex[:12]}"
    admin_url = _admin_url(endpoints.database_url)

    async def create() -> None:
        connection = await asyncpg.connect(admin_url)
        try:
            await connection.execute(f'CREATE DATABASE "{name}"')
        finally:
            await connection.close()

    asyncio.run(create())
    url = f"{admin_url.rpartition('/')[0]}/{name}"
    upgrade(url)
    yield url


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    db = Database(database_url, min_size=1, max_size=20)
    await db.connect()
    try:
        yield db
    finally:
        await db.close()


@pytest.fixture
async def api(database_url: str) -> AsyncIterator[ApiHarness]:
    """The real app in-process on the session database (no Redis)."""
    async with api_harness(Settings(database_url=database_url)) as harness:
        yield harness

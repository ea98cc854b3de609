"""Shared fixtures: one private stack of real services per test session.

``stack``/``endpoints`` (tests/support/services.py) start PostgreSQL, a Redis-compatible
server and a Kafka-compatible broker once; ``database_url`` is a fresh database on
that server, migrated once; ``database`` is a connected pool for one test; tenants
isolate tests from each other.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest

from tests.support.api import ApiHarness, api_harness
from tests.support.databases import fresh_database
from walletd.adapters.embedded import ServiceEndpoints
from walletd.adapters.postgres import Database
from walletd.settings import Settings

pytest_plugins = ["tests.support.services"]


@pytest.fixture(scope="session")
def database_url(endpoints: ServiceEndpoints) -> Iterator[str]:
    """A fresh, migrated database for this session."""
    yield asyncio.run(fresh_database(endpoints.database_url))


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

"""The schema and the posting path on the other PostgreSQL major version we ship with.

The session's server is the machine's PostgreSQL when it has one (15 here); this test
starts the wheel's server (18) next to it, migrates, posts, and checks the guards.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
from alembic import command

from walletd.adapters.embedded import EmbeddedStack
from walletd.adapters.migrations import alembic_config, upgrade
from walletd.adapters.postgres import Database
from walletd.domain.commands import Credit, Debit, Transfer
from walletd.domain.records import Transaction
from walletd.service_layer.engine import Engine
from walletd.service_layer.tenants import create_api_key

pytestmark = pytest.mark.integration
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel_postgres_url() -> object:
    run_dir = REPO_ROOT / ".walletd" / f"test-pg-wheel-{os.getpid()}"
    stack = EmbeddedStack(
        run_dir, postgres=True, redis=False, kafka=False, pg_flavor="wheel", fast=True
    )
    endpoints = stack.start()
    try:
        assert stack.postgres is not None
        yield endpoints.database_url, stack.postgres.version
    finally:
        stack.stop()
        shutil.rmtree(run_dir, ignore_errors=True)


async def test_schema_and_postings_work_on_the_wheel_server(
    wheel_postgres_url: tuple[str, str],
) -> None:
    url, version = wheel_postgres_url
    assert int(version.split(".")[0]) >= 16
    upgrade(url)
    assert await _balance_check_runs_per(url) == "statement"
    # the latest migration also goes back (Alembic runs its own loop: in a thread)
    await asyncio.to_thread(command.downgrade, alembic_config(url), "0002")
    assert await _balance_check_runs_per(url) == "row"
    upgrade(url)
    upgrade(url)
    assert await _balance_check_runs_per(url) == "statement"
    database = Database(url, min_size=1, max_size=4)
    await database.connect()
    try:
        async with database.connection() as connection:
            key = await create_api_key(connection, "pg-versions", ["read"])
            wallets = [uuid.uuid4(), uuid.uuid4()]
            now = datetime.now(UTC)
            for wallet_id in wallets:
                await connection.execute(
                    "INSERT INTO wallets (id, tenant_id, currency, created_at, updated_at)"
                    " VALUES ($1, $2, 'EUR', $3, $3)",
                    wallet_id,
                    key.tenant_id,
                    now,
                )
        engine = Engine(database)
        results = await engine.post(
            key.tenant_id,
            [
                Credit(wallets[0], 500, "EUR"),
                Transfer(wallets[0], wallets[1], 200, "EUR"),
                Debit(wallets[1], 50, "EUR"),
            ],
        )
        assert all(isinstance(result, Transaction) for result in results)
        async with database.connection() as connection:
            balances = dict(
                await connection.fetch(
                    "SELECT id, balance FROM wallets WHERE tenant_id = $1 AND NOT is_system",
                    key.tenant_id,
                )
            )
            total = await connection.fetchval(
                "SELECT sum(balance) FROM wallets WHERE tenant_id = $1", key.tenant_id
            )
            with pytest.raises(asyncpg.RestrictViolationError):
                await connection.execute("DELETE FROM entries WHERE wallet_id = $1", wallets[0])
        assert balances == {wallets[0]: 300, wallets[1]: 150}
        assert total == 0
    finally:
        await database.close()


async def _balance_check_runs_per(url: str) -> str:
    """Whether the ``entries_balanced`` trigger fires per row or per statement."""
    connection = await asyncpg.connect(url)
    try:
        tgtype: int = await connection.fetchval(
            "SELECT tgtype FROM pg_trigger WHERE tgname = 'entries_balanced'"
        )
    finally:
        await connection.close()
    return "row" if tgtype & 1 else "statement"

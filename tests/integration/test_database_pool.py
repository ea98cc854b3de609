"""The connection pool against real PostgreSQL: what a released connection keeps.

walletd leaves no session state on pooled connections, so release skips asyncpg's
reset query (one round trip per checkout on the posting path); an open transaction
is still rolled back before the connection is reused.
"""

from __future__ import annotations

from uuid import uuid4

import pytest

from walletd.adapters.postgres import Database

pytestmark = pytest.mark.integration


async def test_release_sends_no_reset_query(database_url: str) -> None:
    database = Database(database_url, min_size=1, max_size=1)
    await database.connect()
    try:
        async with database.connection() as connection:
            await connection.execute("SELECT set_config('walletd.probe', 'kept', false)")
            backend = await connection.fetchval("SELECT pg_backend_pid()")
        async with database.connection() as connection:
            assert await connection.fetchval("SELECT pg_backend_pid()") == backend
            # RESET ALL would have cleared it: no reset query went out at release.
            assert await connection.fetchval("SELECT current_setting('walletd.probe', true)") == (
                "kept"
            )
    finally:
        await database.close()


async def test_a_transaction_left_open_is_rolled_back_at_release(database_url: str) -> None:
    database = Database(database_url, min_size=1, max_size=1)
    await database.connect()
    tenant_id = uuid4()
    try:
        async with database.connection() as connection:
            transaction = connection.transaction()
            await transaction.start()
            await connection.execute(
                "INSERT INTO tenants (id, name) VALUES ($1, $2)", tenant_id, f"open {tenant_id}"
            )
        async with database.connection() as connection:
            assert not connection.is_in_transaction()
            count = await connection.fetchval(
                "SELECT count(*) FROM tenants WHERE id = $1", tenant_id
            )
            assert count == 0
    finally:
        await database.close()

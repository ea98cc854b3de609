"""Without Redis, PostgreSQL alone says "still running": a concurrent duplicate gets 409."""

from __future__ import annotations

import asyncio
from uuid import UUID

import asyncpg

from tests.support.api import ApiHarness


async def _wait_for_lock_waiters(url: str, count: int) -> None:
    connection = await asyncpg.connect(url)
    try:
        for _ in range(200):
            waiting = await connection.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            )
            if waiting >= count:
                return
            await asyncio.sleep(0.02)
        raise AssertionError("the first request never waited for the wallet lock")
    finally:
        await connection.close()


async def test_a_duplicate_of_a_running_request_gets_409_from_the_database(
    api: ApiHarness,
) -> None:
    client = await api.tenant()
    wallet = await client.wallet()
    body = {"wallet_id": wallet["id"], "amount": 300, "currency": "EUR"}
    url = api.settings.database_url
    blocker = await asyncpg.connect(url)
    try:
        holding = blocker.transaction()
        await holding.start()
        await blocker.execute("SELECT 1 FROM wallets WHERE id = $1 FOR UPDATE", UUID(wallet["id"]))
        first = asyncio.create_task(client.post("/v1/credits", body, idempotency_key="running"))
        await _wait_for_lock_waiters(url, 1)
        duplicate = await asyncio.wait_for(
            client.post("/v1/credits", body, idempotency_key="running"), 5
        )
        assert duplicate.status_code == 409
        assert duplicate.json()["code"] == "idempotency_key_in_use"
        await holding.rollback()
    finally:
        await blocker.close()
    executed = await asyncio.wait_for(first, 10)
    assert executed.status_code == 201
    replay = await client.post("/v1/credits", body, idempotency_key="running")
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.content == executed.content
    assert (await client.get(f"/v1/wallets/{wallet['id']}")).json()["balance"] == 300

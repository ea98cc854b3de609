"""No request can hurt another (SPEC 2): poisoned requests among 200 tenants' transfers.

Every request below shares group transactions with its neighbours. Each poisoned one
gets its own exact answer, and every other tenant's transfer answers 201:

- a debit that would push the wallet's stored daily debit total past int64 → 422;
- a retry whose key was committed while Redis lost its copy → the stored answer, replayed;
- a transfer from a wallet whose row another session keeps locked → 503 with
  ``Retry-After`` once ``lock_timeout`` ends its wait, alone.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
import redis.asyncio as redis_asyncio

from tests.support.api import ApiHarness, TenantClient, api_harness
from walletd.adapters.embedded import ServiceEndpoints
from walletd.settings import Settings

pytestmark = pytest.mark.integration

MAX = 9_223_372_036_854_775_807
NEIGHBOURS = 200


@pytest.fixture
async def harness(database_url: str, endpoints: ServiceEndpoints) -> AsyncIterator[ApiHarness]:
    settings = Settings(
        database_url=database_url,
        redis_url=endpoints.redis_url,
        redis_timeout_seconds=0.25,
        database_lock_timeout_seconds=1.0,
    )
    async with api_harness(settings) as api:
        yield api


async def neighbour(api: ApiHarness) -> tuple[TenantClient, dict[str, Any]]:
    tenant = await api.tenant(scopes="read,write")
    payer, payee = await tenant.wallet(), await tenant.wallet()
    await tenant.credit(payer["id"], 100)
    body = {"from_wallet_id": payer["id"], "to_wallet_id": payee["id"], "amount": 7}
    return tenant, {**body, "currency": "EUR"}


def post(tenant: TenantClient, path: str, body: dict[str, Any], key: str | None = None) -> Any:
    return tenant.post(path, body, idempotency_key=key)


async def test_poisoned_requests_fail_alone_among_other_tenants_transfers(
    harness: ApiHarness, database_url: str, endpoints: ServiceEndpoints
) -> None:
    neighbours = await asyncio.gather(*(neighbour(harness) for _ in range(NEIGHBOURS)))

    overflow = await harness.tenant()
    wallet = await overflow.wallet()

    def money(amount: int) -> dict[str, Any]:
        return {"wallet_id": wallet["id"], "amount": amount, "currency": "EUR"}

    for path, amount in (("/v1/credits", MAX), ("/v1/debits", MAX), ("/v1/credits", 1)):
        done = await post(overflow, path, money(amount))
        assert done.status_code == 201, done.text

    replayed = await harness.tenant()
    payer, payee = await replayed.wallet(), await replayed.wallet()
    await replayed.credit(payer["id"], 50)
    transfer = {
        "from_wallet_id": payer["id"],
        "to_wallet_id": payee["id"],
        "amount": 5,
        "currency": "EUR",
    }
    first = await post(replayed, "/v1/transfers", transfer, key="committed-once")
    assert first.status_code == 201, first.text
    redis = redis_asyncio.Redis.from_url(endpoints.redis_url)
    try:
        await redis.flushall()  # the key's answer now lives in PostgreSQL alone
    finally:
        await redis.aclose()

    stuck = await harness.tenant()
    locked, other = await stuck.wallet(), await stuck.wallet()
    await stuck.credit(locked["id"], 50)
    blocker = await asyncpg.connect(database_url)
    lock = blocker.transaction()
    await lock.start()
    await blocker.execute("SELECT 1 FROM wallets WHERE id = $1 FOR UPDATE", uuid.UUID(locked["id"]))
    try:
        requests = [post(tenant, "/v1/transfers", body) for tenant, body in neighbours]
        requests.append(post(overflow, "/v1/debits", money(1)))
        requests.append(post(replayed, "/v1/transfers", transfer, key="committed-once"))
        stuck_body = {"from_wallet_id": locked["id"], "to_wallet_id": other["id"], "amount": 1}
        requests.append(post(stuck, "/v1/transfers", {**stuck_body, "currency": "EUR"}))
        answers: list[httpx.Response] = await asyncio.gather(*requests)
    finally:
        await lock.rollback()
        await blocker.close()

    *others, overflowed, replay, waited = answers
    assert [answer.status_code for answer in others] == [201] * NEIGHBOURS
    assert overflowed.status_code == 422, overflowed.text
    assert overflowed.json()["code"] == "validation_error"
    assert "daily debit total" in overflowed.json()["detail"]
    assert (replay.status_code, replay.content) == (201, first.content)
    assert replay.headers["idempotent-replayed"] == "true"
    assert waited.status_code == 503, waited.text
    assert waited.json()["code"] == "unavailable"
    assert waited.headers["retry-after"] == "1"
    for tenant, body in neighbours[:5]:
        read = await tenant.get(f"/v1/wallets/{body['from_wallet_id']}")
        assert read.json()["balance"] == 93
    after = await overflow.get(f"/v1/wallets/{wallet['id']}")
    assert after.json()["balance"] == 1  # the refused debit changed nothing

"""Rate limiting per API key (SPEC 2: 429 ``rate_limited``): a token bucket in Redis.

The app runs in-process on the session's PostgreSQL and Redis. Buckets are per key,
so every test uses fresh keys and its numbers are exact: a burst of N passes, the next
request is a 429 with ``Retry-After``, and a limited request leaves no trace under its
Idempotency-Key. With Redis unreachable the limiter fails open and counts it.
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.support.api import ApiHarness, TenantClient, api_harness
from walletd.adapters.embedded import ServiceEndpoints
from walletd.settings import Settings

DECISIONS = "walletd_rate_limit_decisions_total"


@asynccontextmanager
async def limited_api(
    database_url: str, redis_url: str, per_second: int, burst: int
) -> AsyncIterator[ApiHarness]:
    settings = Settings(
        database_url=database_url,
        redis_url=redis_url,
        redis_timeout_seconds=0.25,
        rate_limit_per_second=per_second,
        rate_limit_burst=burst,
    )
    async with api_harness(settings) as harness:
        yield harness


async def decisions(harness: ApiHarness, outcome: str) -> float:
    response = await harness.http.get("/metrics")
    assert response.status_code == 200
    total = 0.0
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == DECISIONS and sample.labels.get("outcome") == outcome:
                total += sample.value
    return total


async def list_wallets(client: TenantClient) -> httpx.Response:
    return await client.get("/v1/wallets")


def assert_rate_limited(response: httpx.Response) -> None:
    assert response.status_code == 429
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["retry-after"] == "1"
    problem = response.json()
    assert problem["code"] == "rate_limited"
    assert problem["status"] == 429
    assert problem["type"] == "urn:walletd:problem:rate_limited"


def unused_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def test_a_key_past_its_burst_gets_429_with_retry_after(
    database_url: str, endpoints: ServiceEndpoints
) -> None:
    async with limited_api(database_url, endpoints.redis_url, per_second=1, burst=3) as api:
        client = await api.tenant()
        statuses = [(await list_wallets(client)).status_code for _ in range(3)]
        assert statuses == [200, 200, 200]
        assert_rate_limited(await list_wallets(client))


async def test_each_api_key_has_its_own_bucket(
    database_url: str, endpoints: ServiceEndpoints
) -> None:
    async with limited_api(database_url, endpoints.redis_url, per_second=1, burst=2) as api:
        tenant_name = f"rate-{uuid.uuid4().hex[:12]}"
        first_key = await api.tenant(name=tenant_name)
        second_key = await api.tenant(name=tenant_name)
        assert first_key.tenant_id == second_key.tenant_id
        assert [(await list_wallets(first_key)).status_code for _ in range(2)] == [200, 200]
        assert_rate_limited(await list_wallets(first_key))
        assert (await list_wallets(second_key)).status_code == 200


async def test_the_bucket_refills_at_the_configured_rate(
    database_url: str, endpoints: ServiceEndpoints
) -> None:
    async with limited_api(database_url, endpoints.redis_url, per_second=10, burst=1) as api:
        client = await api.tenant()
        assert (await list_wallets(client)).status_code == 200
        assert_rate_limited(await list_wallets(client))
        await asyncio.sleep(0.15)  # 10 tokens a second: one is back after 0.1 s
        assert (await list_wallets(client)).status_code == 200


async def test_a_limited_request_is_not_stored_under_its_idempotency_key(
    database_url: str, endpoints: ServiceEndpoints
) -> None:
    async with limited_api(database_url, endpoints.redis_url, per_second=2, burst=2) as api:
        client = await api.tenant()
        assert [(await list_wallets(client)).status_code for _ in range(2)] == [200, 200]
        limited = await client.post("/v1/wallets", {"currency": "EUR"}, idempotency_key="rl-1")
        assert_rate_limited(limited)
        await asyncio.sleep(1.0)  # both tokens are back
        executed = await client.post("/v1/wallets", {"currency": "EUR"}, idempotency_key="rl-1")
        assert executed.status_code == 201
        assert "idempotent-replayed" not in executed.headers
        replayed = await client.post("/v1/wallets", {"currency": "EUR"}, idempotency_key="rl-1")
        assert (replayed.status_code, replayed.headers["idempotent-replayed"]) == (201, "true")
        assert replayed.json()["id"] == executed.json()["id"]


async def test_concurrent_requests_take_exactly_the_burst(
    database_url: str, endpoints: ServiceEndpoints
) -> None:
    async with limited_api(database_url, endpoints.redis_url, per_second=1, burst=5) as api:
        client = await api.tenant()
        responses = await asyncio.gather(*(list_wallets(client) for _ in range(20)))
        statuses = sorted(response.status_code for response in responses)
        assert statuses == [200] * 5 + [429] * 15


async def test_rate_limiting_is_off_by_default(
    database_url: str, endpoints: ServiceEndpoints
) -> None:
    settings = Settings(database_url=database_url, redis_url=endpoints.redis_url)
    assert (settings.rate_limit_per_second, settings.rate_limit_burst) == (0, 0)
    async with api_harness(settings) as api:
        client = await api.tenant()
        before = [await decisions(api, outcome) for outcome in ("allowed", "limited")]
        statuses = {(await list_wallets(client)).status_code for _ in range(30)}
        assert statuses == {200}
        assert [await decisions(api, outcome) for outcome in ("allowed", "limited")] == before


async def test_redis_down_fails_open_and_is_counted(database_url: str) -> None:
    dead_redis = f"redis://127.0.0.1:{unused_loopback_port()}/0"
    async with limited_api(database_url, dead_redis, per_second=1, burst=1) as api:
        client = await api.tenant()
        before = await decisions(api, "fail_open")
        statuses = [(await list_wallets(client)).status_code for _ in range(5)]
        assert statuses == [200] * 5
        assert await decisions(api, "fail_open") == before + 5


async def test_requests_without_a_valid_key_do_not_spend_tokens(
    database_url: str, endpoints: ServiceEndpoints
) -> None:
    async with limited_api(database_url, endpoints.redis_url, per_second=1, burst=2) as api:
        client = await api.tenant()
        before = await decisions(api, "allowed")
        for _ in range(5):
            response = await api.http.get("/v1/wallets", headers={"Authorization": "Bearer nope"})
            assert response.status_code == 401
        assert await decisions(api, "allowed") == before
        assert [(await list_wallets(client)).status_code for _ in range(2)] == [200, 200]

"""Idempotency over HTTP (SPEC 4), with Redis healthy, flushed, and stopped.

The app runs in-process (its real lifespan, real PostgreSQL and Redis) behind
``httpx.ASGITransport``. Every behaviour runs in three modes: ``redis`` (the fast
path), ``redis_flushed`` (FLUSHALL between the first request and its retries, or
during a burst) and ``redis_stopped`` (the server is down for the whole test; the
database alone decides). Money must move exactly once in all three.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import asyncpg
import httpx
import orjson
import pytest
import redis.asyncio as redis_asyncio
from prometheus_client.parser import text_string_to_metric_families

from tests.support.api import ApiHarness, TenantClient, api_harness
from walletd.adapters.embedded import EmbeddedStack, ServiceEndpoints
from walletd.service_layer.idempotency_cache import redis_keys
from walletd.settings import Settings

pytestmark = pytest.mark.integration

MODES = ("redis", "redis_flushed", "redis_stopped")
BURST_SIZE = 20
REDIS_RETURN_DEADLINE_SECONDS = 10.0


@dataclass
class Api:
    mode: str
    harness: ApiHarness
    redis_url: str
    database_url: str

    async def flush_redis(self) -> None:
        client = redis_asyncio.Redis.from_url(self.redis_url)
        try:
            await client.flushall()
        finally:
            await client.aclose()

    async def disrupt(self) -> None:
        """Between a first request and its retries: what this mode does to Redis."""
        if self.mode == "redis_flushed":
            await self.flush_redis()

    async def count(self, sql: str, tenant: TenantClient) -> int:
        connection = await asyncpg.connect(self.database_url)
        try:
            value: int = await connection.fetchval(sql, tenant.tenant_id)
        finally:
            await connection.close()
        return value

    async def entries(self, tenant: TenantClient) -> int:
        return await self.count(
            "SELECT count(*) FROM entries e JOIN wallets w ON w.id = e.wallet_id"
            " WHERE w.tenant_id = $1",
            tenant,
        )

    async def transactions(self, tenant: TenantClient) -> int:
        return await self.count("SELECT count(*) FROM transactions WHERE tenant_id = $1", tenant)

    async def metric(self, name: str, **labels: str) -> float:
        response = await self.harness.http.get("/metrics")
        assert response.status_code == 200
        total = 0.0
        for family in text_string_to_metric_families(response.text):
            for sample in family.samples:
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    total += sample.value
        return total


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest, stack: EmbeddedStack) -> Any:
    if request.param != "redis_stopped":
        yield request.param
        return
    if stack.redis is None:
        pytest.skip("Redis is external (WALLETD_REDIS_URL): this test cannot stop it")
    stack.redis.stop()
    try:
        yield request.param
    finally:
        stack.redis.start()


def settings_for(database_url: str, endpoints: ServiceEndpoints) -> Settings:
    # A generous deadline: the assertions here are about outcomes, not about speed.
    return Settings(
        database_url=database_url, redis_url=endpoints.redis_url, redis_timeout_seconds=0.25
    )


@pytest.fixture
async def api(mode: str, database_url: str, endpoints: ServiceEndpoints) -> AsyncIterator[Api]:
    async with api_harness(settings_for(database_url, endpoints)) as harness:
        yield Api(mode, harness, endpoints.redis_url, database_url)


def credit_body(wallet: dict[str, Any], amount: int) -> dict[str, Any]:
    return {"wallet_id": wallet["id"], "amount": amount, "currency": "EUR"}


def assert_replay_of(retry: httpx.Response, first: httpx.Response) -> None:
    assert retry.status_code == first.status_code
    assert retry.content == first.content
    assert retry.headers["idempotent-replayed"] == "true"
    assert retry.headers["content-type"] == first.headers["content-type"]


async def balance_and_version(tenant: TenantClient, wallet: dict[str, Any]) -> tuple[int, int]:
    response = await tenant.get(f"/v1/wallets/{wallet['id']}")
    assert response.status_code == 200
    body = response.json()
    return body["balance"], body["version"]


async def test_retry_replays_the_first_answer_byte_for_byte(api: Api) -> None:
    tenant = await api.harness.tenant()
    wallet = await tenant.wallet()
    body = credit_body(wallet, 1500)
    fallbacks = await api.metric("walletd_idempotency_redis_fallbacks_total")
    first = await tenant.post("/v1/credits", body, idempotency_key="retry-1")
    assert first.status_code == 201
    assert "idempotent-replayed" not in first.headers
    await api.disrupt()

    second = await tenant.post("/v1/credits", body, idempotency_key="retry-1")
    reordered = orjson.dumps(dict(reversed(list(body.items()))))  # same body, canonically
    third = await tenant.post(
        "/v1/credits",
        content=reordered,
        idempotency_key="retry-1",
        headers={"content-type": "application/json"},
    )

    assert_replay_of(second, first)
    assert_replay_of(third, first)
    assert await api.entries(tenant) == 2
    assert await api.transactions(tenant) == 1
    assert await balance_and_version(tenant, wallet) == (1500, 1)
    fallen_back = await api.metric("walletd_idempotency_redis_fallbacks_total") - fallbacks
    assert fallen_back == (3 if api.mode == "redis_stopped" else 0)
    assert (await api.harness.http.get("/readyz")).status_code == 200


async def test_same_key_with_another_body_or_path_is_refused_with_422(api: Api) -> None:
    tenant = await api.harness.tenant()
    wallet = await tenant.wallet()
    first = await tenant.post("/v1/credits", credit_body(wallet, 100), idempotency_key="reuse")
    assert first.status_code == 201
    await api.disrupt()

    other_body = await tenant.post("/v1/credits", credit_body(wallet, 101), idempotency_key="reuse")
    other_path = await tenant.post("/v1/debits", credit_body(wallet, 100), idempotency_key="reuse")

    for refused in (other_body, other_path):
        assert refused.status_code == 422
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.json()["code"] == "idempotency_key_reused"
    assert await api.entries(tenant) == 2
    assert await balance_and_version(tenant, wallet) == (100, 1)


async def test_twenty_concurrent_requests_with_one_key_post_exactly_once(api: Api) -> None:
    tenant = await api.harness.tenant()
    wallet = await tenant.wallet()
    # The tenant's EUR system wallet exists before the burst: its first creation is racy
    # under concurrency (ledger_store.ensure_system_wallet, reported), not idempotency.
    await tenant.credit((await tenant.wallet())["id"], 1)
    body = credit_body(wallet, 700)
    burst_done = asyncio.Event()

    async def flush_during_burst() -> None:
        for _ in range(1000):  # bounded; FLUSHALL drops locks of requests still running
            if burst_done.is_set():
                return
            await api.flush_redis()
            await asyncio.sleep(0.002)

    flusher = asyncio.create_task(flush_during_burst()) if api.mode == "redis_flushed" else None
    try:
        responses = await asyncio.gather(
            *(tenant.post("/v1/credits", body, idempotency_key="burst") for _ in range(BURST_SIZE))
        )
    finally:
        burst_done.set()
        if flusher is not None:
            await flusher

    executed = [
        r for r in responses if r.status_code == 201 and "idempotent-replayed" not in r.headers
    ]
    assert len(executed) == 1
    for response in responses:
        if response.status_code == 409:
            assert response.json()["code"] == "idempotency_key_in_use"
        elif response is not executed[0]:
            assert_replay_of(response, executed[0])
    assert_replay_of(await tenant.post("/v1/credits", body, idempotency_key="burst"), executed[0])
    assert await api.entries(tenant) == 2 + 2
    assert await api.transactions(tenant) == 1 + 1
    assert await balance_and_version(tenant, wallet) == (700, 1)


async def wait_for_lock_waiters(api: Api, count: int) -> None:
    """Until ``count`` walletd sessions of this database wait on a row lock (bounded)."""
    connection = await asyncpg.connect(api.database_url)
    try:
        for _ in range(500):
            waiting = await connection.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND application_name = 'walletd' AND wait_event_type = 'Lock'"
            )
            if waiting >= count:
                return
            await asyncio.sleep(0.01)
    finally:
        await connection.close()
    raise AssertionError(f"fewer than {count} requests waiting on a lock after 5 s")


async def test_a_duplicate_of_a_request_still_running_gets_409_or_waits_for_its_answer(
    api: Api,
) -> None:
    tenant = await api.harness.tenant()
    wallet = await tenant.wallet()
    await tenant.credit(wallet["id"], 1)
    body = credit_body(wallet, 300)
    blocker = await asyncpg.connect(api.database_url)
    try:
        holding = blocker.transaction()
        await holding.start()  # holds the wallet row: the first request stays in flight
        await blocker.execute("SELECT 1 FROM wallets WHERE id = $1 FOR UPDATE", UUID(wallet["id"]))
        first = asyncio.create_task(tenant.post("/v1/credits", body, idempotency_key="slow"))
        await wait_for_lock_waiters(api, 1)
        await api.disrupt()
        duplicate = asyncio.create_task(tenant.post("/v1/credits", body, idempotency_key="slow"))
        if api.mode == "redis":  # Redis knows the key is locked: 409 at once
            early = await asyncio.wait_for(asyncio.shield(duplicate), 5)
            assert early.status_code == 409
            assert early.json()["code"] == "idempotency_key_in_use"
        else:  # PostgreSQL alone: the duplicate waits behind the first (docs/idempotency.md)
            await asyncio.wait({duplicate}, timeout=0.3)
        await holding.rollback()
    finally:
        await blocker.close()
    executed, late = await asyncio.wait_for(asyncio.gather(first, duplicate), 10)

    assert executed.status_code == 201
    assert "idempotent-replayed" not in executed.headers
    if late.status_code == 409:
        assert late.json()["code"] == "idempotency_key_in_use"
    else:
        assert_replay_of(late, executed)
    assert_replay_of(await tenant.post("/v1/credits", body, idempotency_key="slow"), executed)
    assert await balance_and_version(tenant, wallet) == (301, 2)


async def test_business_failure_is_replayed_even_after_the_wallet_is_funded(api: Api) -> None:
    tenant = await api.harness.tenant()
    wallet = await tenant.wallet()
    debit = credit_body(wallet, 500)
    first = await tenant.post("/v1/debits", debit, idempotency_key="too-early")
    assert first.status_code == 422
    assert first.json()["code"] == "insufficient_funds"
    await api.disrupt()
    await tenant.credit(wallet["id"], 1000)

    retry = await tenant.post("/v1/debits", debit, idempotency_key="too-early")

    assert_replay_of(retry, first)
    assert await balance_and_version(tenant, wallet) == (1000, 1)


async def test_the_same_key_in_two_tenants_binds_two_answers(api: Api) -> None:
    alice, bob = await api.harness.tenant(), await api.harness.tenant()
    alice_wallet, bob_wallet = await alice.wallet(), await bob.wallet()
    first_alice = await alice.post(
        "/v1/credits", credit_body(alice_wallet, 111), idempotency_key="k"
    )
    first_bob = await bob.post("/v1/credits", credit_body(bob_wallet, 222), idempotency_key="k")
    await api.disrupt()

    retry_alice = await alice.post(
        "/v1/credits", credit_body(alice_wallet, 111), idempotency_key="k"
    )
    retry_bob = await bob.post("/v1/credits", credit_body(bob_wallet, 222), idempotency_key="k")

    assert (first_alice.status_code, first_bob.status_code) == (201, 201)
    assert "idempotent-replayed" not in first_bob.headers
    assert first_alice.json()["id"] != first_bob.json()["id"]
    assert_replay_of(retry_alice, first_alice)
    assert_replay_of(retry_bob, first_bob)
    assert await balance_and_version(alice, alice_wallet) == (111, 1)
    assert await balance_and_version(bob, bob_wallet) == (222, 1)


# ------------------------------------------------------------- Redis-specific behaviour


@pytest.fixture
async def redis_api(database_url: str, endpoints: ServiceEndpoints) -> AsyncIterator[Api]:
    async with api_harness(settings_for(database_url, endpoints)) as harness:
        yield Api("redis", harness, endpoints.redis_url, database_url)


async def test_cached_replay_is_served_by_redis_without_the_database(redis_api: Api) -> None:
    tenant = await redis_api.harness.tenant()
    wallet = await tenant.wallet()
    first = await tenant.post("/v1/credits", credit_body(wallet, 42), idempotency_key="fast")
    connection = await asyncpg.connect(redis_api.database_url)
    try:  # the database no longer knows the key: only Redis can answer the retry
        await connection.execute(
            "DELETE FROM idempotency_keys WHERE tenant_id = $1 AND key = 'fast'", tenant.tenant_id
        )
    finally:
        await connection.close()
    before = await redis_api.metric("walletd_idempotency_requests_total", outcome="replayed_redis")

    retry = await tenant.post("/v1/credits", credit_body(wallet, 42), idempotency_key="fast")

    assert_replay_of(retry, first)
    after = await redis_api.metric("walletd_idempotency_requests_total", outcome="replayed_redis")
    assert after == before + 1


async def cache_holds(redis_url: str, tenant_id: UUID, key: str) -> bool:
    client = redis_asyncio.Redis.from_url(redis_url)
    try:
        return bool(await client.exists(redis_keys(tenant_id, key)[0]))
    finally:
        await client.aclose()


async def test_without_redis_readyz_stays_200_fallbacks_are_counted_and_the_cache_returns(
    stack: EmbeddedStack, database_url: str, endpoints: ServiceEndpoints
) -> None:
    if stack.redis is None:
        pytest.skip("Redis is external (WALLETD_REDIS_URL): this test cannot stop it")
    stack.redis.stop()
    try:
        async with api_harness(settings_for(database_url, endpoints)) as harness:
            api = Api("redis_stopped", harness, endpoints.redis_url, database_url)
            tenant = await harness.tenant()
            wallet = await tenant.wallet()
            fallbacks = await api.metric("walletd_idempotency_redis_fallbacks_total")
            assert (await harness.http.get("/readyz")).status_code == 200
            down = await tenant.post("/v1/credits", credit_body(wallet, 5), idempotency_key="down")
            assert down.status_code == 201
            assert await api.metric("walletd_idempotency_redis_fallbacks_total") >= fallbacks + 1
            stack.redis.start()
            assert (await harness.http.get("/readyz")).status_code == 200
            await assert_cache_used_again(api, tenant, wallet)
    finally:
        stack.redis.start()  # a no-op when the test already restarted it


async def assert_cache_used_again(api: Api, tenant: TenantClient, wallet: dict[str, Any]) -> None:
    """Within the breaker's period, a new key's answer is cached and replayed from Redis."""
    deadline = time.monotonic() + REDIS_RETURN_DEADLINE_SECONDS
    attempt = 0
    while True:
        attempt += 1
        key = f"back-{attempt}"
        first = await tenant.post("/v1/credits", credit_body(wallet, 1), idempotency_key=key)
        assert first.status_code == 201
        if await cache_holds(api.redis_url, tenant.tenant_id, key):
            break
        assert time.monotonic() < deadline, "Redis came back but the cache is not used"
        await asyncio.sleep(0.2)
    before = await api.metric("walletd_idempotency_requests_total", outcome="replayed_redis")
    retry = await tenant.post("/v1/credits", credit_body(wallet, 1), idempotency_key=key)
    assert_replay_of(retry, first)
    assert await api.metric("walletd_idempotency_requests_total", outcome="replayed_redis") == (
        before + 1
    )


async def test_a_hung_redis_costs_a_bounded_timeout_and_the_database_answers(
    database_url: str,
) -> None:
    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(65536):  # accepts and reads, never answers
            pass
        writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    hung_url = f"redis://127.0.0.1:{server.sockets[0].getsockname()[1]}/0"
    settings = Settings(database_url=database_url, redis_url=hung_url, redis_timeout_seconds=0.05)
    name = "walletd_idempotency_redis_fallbacks_total"
    try:
        async with api_harness(settings) as harness:  # start-up script load times out: failure 1
            api = Api("redis_hung", harness, hung_url, database_url)
            before = [await api.metric(name, reason=r) for r in ("timeout", "circuit_open")]
            tenant = await harness.tenant()
            wallet = await tenant.wallet()  # its claim times out (failure 2), finish queued
            started = time.perf_counter()
            first = await tenant.post("/v1/credits", credit_body(wallet, 9), idempotency_key="h")
            retry = await tenant.post("/v1/credits", credit_body(wallet, 9), idempotency_key="h")
            elapsed = time.perf_counter() - started
            after = [await api.metric(name, reason=r) for r in ("timeout", "circuit_open")]
    finally:
        server.close()
    assert first.status_code == 201
    assert_replay_of(retry, first)
    assert elapsed < 1.0  # the breaker is open: no Redis deadline is paid any more
    # Each of the three requests (wallet, first, retry) fell back once. The wallet's
    # claim timed out; the first one's claim may share a round trip with the wallet's
    # queued finish (a timeout) or come after it (circuit open); the retry finds the
    # breaker open.
    timeouts, refused = after[0] - before[0], after[1] - before[1]
    assert timeouts + refused == 3
    assert timeouts >= 1 and refused >= 1


# ------------------------------------------------------- keys on admin and action POSTs


async def status_events(api: Api, tenant: TenantClient, event_type: str) -> int:
    return await api.count(
        f"SELECT count(*) FROM outbox WHERE tenant_id = $1 AND event_type = '{event_type}'",
        tenant,
    )


async def admin_actions(tenant: TenantClient, action: str) -> int:
    log = (await tenant.get("/v1/audit-log", params={"limit": 500})).json()["data"]
    return sum(1 for item in log if item["action"] == action)


async def wallet_status(tenant: TenantClient, wallet: dict[str, Any]) -> str:
    status: str = (await tenant.get(f"/v1/wallets/{wallet['id']}")).json()["status"]
    return status


def assert_reused(response: httpx.Response) -> None:
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "idempotency_key_reused"
    assert "idempotent-replayed" not in response.headers


async def test_a_freeze_key_sent_again_to_unfreeze_is_refused_and_the_wallet_stays_frozen(
    api: Api,
) -> None:
    tenant = await api.harness.tenant()
    wallet = await tenant.wallet()
    path = f"/v1/wallets/{wallet['id']}"
    frozen = await tenant.post(f"{path}/freeze", {"reason": "check"}, idempotency_key="adm-1")
    assert (frozen.status_code, frozen.json()["status"]) == (200, "frozen")
    await api.disrupt()

    unfreeze = await tenant.post(f"{path}/unfreeze", {"reason": "check"}, idempotency_key="adm-1")
    other_reason = await tenant.post(f"{path}/freeze", {"reason": "other"}, idempotency_key="adm-1")

    assert_reused(unfreeze)
    assert_reused(other_reason)
    assert await wallet_status(tenant, wallet) == "frozen"
    assert await status_events(api, tenant, "wallet.unfrozen") == 0
    assert await admin_actions(tenant, "wallet.unfreeze") == 0


async def test_a_freeze_retried_with_its_key_is_replayed_and_freezes_once(api: Api) -> None:
    tenant = await api.harness.tenant()
    wallet = await tenant.wallet()
    path = f"/v1/wallets/{wallet['id']}/freeze"
    first = await tenant.post(path, {"reason": "fraud"}, idempotency_key="freeze-1")
    assert (first.status_code, first.json()["status"]) == (200, "frozen")
    assert "idempotent-replayed" not in first.headers
    await api.disrupt()

    retry = await tenant.post(path, {"reason": "fraud"}, idempotency_key="freeze-1")

    assert_replay_of(retry, first)
    assert await status_events(api, tenant, "wallet.frozen") == 1
    assert await admin_actions(tenant, "wallet.freeze") == 1


async def test_a_no_op_freeze_is_answered_and_stored_under_its_key(api: Api) -> None:
    tenant = await api.harness.tenant()
    wallet = await tenant.wallet()
    path = f"/v1/wallets/{wallet['id']}"
    assert (await tenant.post(f"{path}/freeze", auto_key=False)).status_code == 200
    no_op = await tenant.post(f"{path}/freeze", idempotency_key="again")
    assert (no_op.status_code, no_op.json()["status"]) == (200, "frozen")
    assert "idempotent-replayed" not in no_op.headers
    assert (await tenant.post(f"{path}/unfreeze", auto_key=False)).status_code == 200
    await api.disrupt()

    retry = await tenant.post(f"{path}/freeze", idempotency_key="again")
    empty_body = await tenant.post(f"{path}/freeze", {}, idempotency_key="again")

    assert_replay_of(retry, no_op)  # the stored answer, not a second freeze
    assert_replay_of(empty_body, no_op)  # no body is the empty body
    assert await wallet_status(tenant, wallet) == "active"
    assert await status_events(api, tenant, "wallet.frozen") == 1


async def test_a_close_and_its_refusal_are_replayed_for_their_keys(api: Api) -> None:
    tenant = await api.harness.tenant()
    empty, funded = await tenant.wallet(), await tenant.wallet()
    await tenant.credit(funded["id"], 10)
    closed = await tenant.post(f"/v1/wallets/{empty['id']}/close", idempotency_key="close-1")
    assert (closed.status_code, closed.json()["status"]) == (200, "closed")
    refused = await tenant.post(f"/v1/wallets/{funded['id']}/close", idempotency_key="close-2")
    assert (refused.status_code, refused.json()["code"]) == (422, "wallet_not_empty")
    debit = credit_body(funded, 10)
    assert (await tenant.post("/v1/debits", debit)).status_code == 201
    await api.disrupt()

    closed_again = await tenant.post(f"/v1/wallets/{empty['id']}/close", idempotency_key="close-1")
    refused_again = await tenant.post(
        f"/v1/wallets/{funded['id']}/close", idempotency_key="close-2"
    )

    assert_replay_of(closed_again, closed)
    assert_replay_of(refused_again, refused)  # a business failure stays failed for its key
    assert await wallet_status(tenant, funded) == "active"
    assert await status_events(api, tenant, "wallet.closed") == 1


async def test_a_freeze_still_running_holds_its_key(api: Api) -> None:
    tenant = await api.harness.tenant()
    wallet = await tenant.wallet()
    path = f"/v1/wallets/{wallet['id']}/freeze"
    blocker = await asyncpg.connect(api.database_url)
    try:
        holding = blocker.transaction()
        await holding.start()  # holds the wallet row: the first freeze stays in flight
        await blocker.execute("SELECT 1 FROM wallets WHERE id = $1 FOR UPDATE", UUID(wallet["id"]))
        first = asyncio.create_task(tenant.post(path, idempotency_key="slow-freeze"))
        await wait_for_lock_waiters(api, 1)
        await api.disrupt()
        duplicate = asyncio.create_task(tenant.post(path, idempotency_key="slow-freeze"))
        if api.mode != "redis_flushed":  # Redis's lock, or the first one's database claim
            early = await asyncio.wait_for(asyncio.shield(duplicate), 5)
            assert (early.status_code, early.json()["code"]) == (409, "idempotency_key_in_use")
        else:  # the lock was flushed: the duplicate waits behind the first, then replays
            await asyncio.wait({duplicate}, timeout=0.3)
        await holding.rollback()
    finally:
        await blocker.close()
    executed, late = await asyncio.wait_for(asyncio.gather(first, duplicate), 10)

    assert (executed.status_code, executed.json()["status"]) == (200, "frozen")
    assert "idempotent-replayed" not in executed.headers
    if late.status_code != 409:
        assert_replay_of(late, executed)
    assert_replay_of(await tenant.post(path, idempotency_key="slow-freeze"), executed)
    assert await status_events(api, tenant, "wallet.frozen") == 1


async def test_void_reverse_approve_and_reject_keys_replay_and_refuse_reuse(api: Api) -> None:
    tenant = await api.harness.tenant()
    wallet = await tenant.wallet()
    await tenant.credit(wallet["id"], 10_000)
    holds = []
    for _ in range(2):
        hold = await tenant.post("/v1/holds", credit_body(wallet, 100))
        holds.append(hold.json()["id"])
    credits = [await tenant.credit(wallet["id"], 5) for _ in range(2)]
    rule = {"amount": 1_000, "currency": "EUR"}
    big = {"name": "big", "type": "amount_at_least", "params": rule, "action": "review"}
    assert (await tenant.put("/v1/risk-rules", {"rules": [big]})).status_code == 200
    reviews = [(await tenant.post("/v1/debits", credit_body(wallet, 1_000))).json()["id"]]
    reviews.append((await tenant.post("/v1/debits", credit_body(wallet, 1_000))).json()["id"])
    firsts = {
        "void": await tenant.post(f"/v1/holds/{holds[0]}/void", idempotency_key="void-k"),
        "reverse": await tenant.post(
            f"/v1/transactions/{credits[0]['id']}/reverse", {"reason": "x"}, idempotency_key="rev-k"
        ),
        "approve": await tenant.post(f"/v1/reviews/{reviews[0]}/approve", idempotency_key="dec-k"),
    }
    assert [first.status_code for first in firsts.values()] == [200, 201, 200]
    await api.disrupt()

    assert_replay_of(
        await tenant.post(f"/v1/holds/{holds[0]}/void", idempotency_key="void-k"), firsts["void"]
    )
    assert_replay_of(
        await tenant.post(
            f"/v1/transactions/{credits[0]['id']}/reverse", {"reason": "x"}, idempotency_key="rev-k"
        ),
        firsts["reverse"],
    )
    assert_replay_of(
        await tenant.post(f"/v1/reviews/{reviews[0]}/approve", idempotency_key="dec-k"),
        firsts["approve"],
    )
    assert_reused(await tenant.post(f"/v1/holds/{holds[1]}/void", idempotency_key="void-k"))
    assert_reused(
        await tenant.post(
            f"/v1/transactions/{credits[1]['id']}/reverse", {"reason": "x"}, idempotency_key="rev-k"
        )
    )
    assert_reused(
        await tenant.post(
            f"/v1/transactions/{credits[0]['id']}/reverse", {"reason": "y"}, idempotency_key="rev-k"
        )
    )
    assert_reused(await tenant.post(f"/v1/reviews/{reviews[1]}/reject", idempotency_key="dec-k"))
    assert_reused(await tenant.post(f"/v1/reviews/{reviews[0]}/reject", idempotency_key="dec-k"))
    assert_reused(await tenant.post(f"/v1/wallets/{wallet['id']}/freeze", idempotency_key="dec-k"))
    assert (await tenant.get(f"/v1/holds/{holds[1]}")).json()["status"] == "pending"
    assert (await tenant.get(f"/v1/transactions/{reviews[1]}")).json()["status"] == (
        "pending_review"
    )
    assert await api.transactions(tenant) == 1 + 2 + 2 + 1  # one reversal only
    assert await wallet_status(tenant, wallet) == "active"

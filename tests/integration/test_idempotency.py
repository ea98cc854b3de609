"""Idempotency below HTTP: the Redis fast path, the circuit breaker, and PostgreSQL's guarantee.

Real Redis and PostgreSQL from the session stack; no mocks. The breaker's clock is the
only thing faked (a plain function), so that "one probe per period" is exact.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import asyncpg
import pytest
import redis.asyncio as redis_asyncio
from prometheus_client import REGISTRY

from walletd.adapters.embedded import ServiceEndpoints, free_port
from walletd.adapters.postgres import Database
from walletd.adapters.redis_client import CircuitBreaker, RedisClient, RedisUnavailable
from walletd.errors import IdempotencyKeyInUse
from walletd.service_layer.idempotency import (
    DuplicateKey,
    IdempotentRequest,
    StoredAnswer,
    claim_key,
    load_answer,
    prune_expired_keys,
    request_fingerprint,
    run_pruner,
    store_answer,
)
from walletd.service_layer.idempotency_cache import (
    MAX_CACHED_BODY_BYTES,
    ClaimOutcome,
    IdempotencyCache,
    encode_entry,
    redis_keys,
)
from walletd.service_layer.tenants import create_api_key

pytestmark = pytest.mark.integration

DAY_SECONDS = 24 * 3600.0
LOCK_SECONDS = 30.0


def fallbacks(reason: str) -> float:
    value = REGISTRY.get_sample_value(
        "walletd_idempotency_redis_fallbacks_total", {"reason": reason}
    )
    return value or 0.0


def credit_request(key: str, amount: int = 100) -> IdempotentRequest:
    body = {"wallet_id": str(uuid.UUID(int=1)), "amount": amount, "currency": "EUR"}
    return IdempotentRequest(
        key, "POST", "/v1/credits", request_fingerprint("POST", "/v1/credits", body)
    )


@pytest.fixture
async def redis_client(endpoints: ServiceEndpoints) -> AsyncIterator[RedisClient]:
    client = RedisClient(endpoints.redis_url, timeout_seconds=0.5)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def raw_redis(endpoints: ServiceEndpoints) -> AsyncIterator[redis_asyncio.Redis]:
    client = redis_asyncio.Redis.from_url(endpoints.redis_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def cache(redis_client: RedisClient) -> IdempotencyCache:
    return IdempotencyCache(redis_client, retention_seconds=DAY_SECONDS, lock_seconds=LOCK_SECONDS)


async def new_tenant(database_url: str) -> uuid.UUID:
    connection = await asyncpg.connect(database_url)
    try:
        new_key = await create_api_key(connection, f"idem-{uuid.uuid4().hex[:12]}", ["write"])
    finally:
        await connection.close()
    return new_key.tenant_id


# --------------------------------------------------------------------- circuit breaker


def test_breaker_opens_after_three_failures_and_lets_one_probe_per_period() -> None:
    now = [100.0]
    breaker = CircuitBreaker(failure_threshold=3, open_seconds=2.0, clock=lambda: now[0])
    for _ in range(2):
        assert breaker.allow() is True
        breaker.record_failure()
    assert breaker.is_open is False
    breaker.record_failure()
    assert breaker.is_open is True
    assert breaker.allow() is False
    now[0] = 101.999
    assert breaker.allow() is False
    now[0] = 102.0
    assert breaker.allow() is True  # the probe
    assert breaker.allow() is False  # only one probe at a time
    breaker.record_failure()  # the probe failed: open for another period
    now[0] = 103.5
    assert breaker.allow() is False
    now[0] = 104.0
    assert breaker.allow() is True
    breaker.record_success()
    assert breaker.is_open is False
    assert breaker.allow() is True


def test_breaker_lets_the_next_caller_probe_when_a_probe_is_cancelled() -> None:
    now = [0.0]
    breaker = CircuitBreaker(failure_threshold=1, open_seconds=1.0, clock=lambda: now[0])
    breaker.record_failure()
    now[0] = 1.0
    assert breaker.allow() is True
    breaker.abandon_probe()
    assert breaker.allow() is True


async def test_dead_redis_costs_three_failed_calls_then_none_until_the_probe() -> None:
    client = RedisClient(f"redis://127.0.0.1:{free_port()}/0", timeout_seconds=0.05)
    try:
        reasons = []
        started = time.perf_counter()
        for _ in range(10):
            with pytest.raises(RedisUnavailable) as caught:
                await client.call(lambda redis: redis.get("x"))
            reasons.append(caught.value.reason)
        elapsed = time.perf_counter() - started
    finally:
        await client.close()
    assert reasons == ["connection"] * 3 + ["circuit_open"] * 7
    assert elapsed < 3 * 0.05 + 0.1  # bounded: never more than one deadline per call


@pytest.fixture
async def silent_redis_url() -> AsyncIterator[str]:
    """A loopback server that accepts connections and reads, but never answers: a hung Redis."""

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(65536):
            pass
        writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.close()


async def test_slow_redis_costs_one_deadline_per_call_until_the_breaker_opens(
    silent_redis_url: str,
) -> None:
    client = RedisClient(silent_redis_url, timeout_seconds=0.05)
    reasons, durations = [], []
    try:
        for _ in range(6):
            started = time.perf_counter()
            with pytest.raises(RedisUnavailable) as caught:
                await client.call(lambda redis: redis.get("x"))
            durations.append(time.perf_counter() - started)
            reasons.append(caught.value.reason)
    finally:
        await client.close()
    assert reasons == ["timeout"] * 3 + ["circuit_open"] * 3
    assert all(0.04 <= duration < 0.2 for duration in durations[:3])
    assert all(duration < 0.01 for duration in durations[3:])


# ------------------------------------------------------------- batched script calls


def _batches() -> tuple[float, float]:
    """(pipelines sent, script calls in them) so far in this process."""
    count = REGISTRY.get_sample_value("walletd_redis_script_batch_size_count") or 0
    total = REGISTRY.get_sample_value("walletd_redis_script_batch_size_sum") or 0
    return count, total


async def test_concurrent_claims_share_round_trips_and_keep_their_own_replies(
    cache: IdempotencyCache, raw_redis: redis_asyncio.Redis
) -> None:
    tenant_id = uuid.uuid4()
    requests = [credit_request(f"k-{n}-{uuid.uuid4()}") for n in range(50)]
    before = _batches()
    claims = await asyncio.gather(*(cache.claim(tenant_id, r) for r in requests))
    pipelines, calls = (now - then for now, then in zip(_batches(), before, strict=True))
    assert calls == 50 and pipelines < 50
    assert all(claim.outcome is ClaimOutcome.LOCKED for claim in claims)
    assert len({claim.token for claim in claims}) == 50
    for request, claim in zip(requests, claims, strict=True):
        lock_key = redis_keys(tenant_id, request.key)[1]
        assert await raw_redis.get(lock_key) == claim.token.encode()


async def test_scripts_flushed_from_redis_are_loaded_again(
    cache: IdempotencyCache, raw_redis: redis_asyncio.Redis
) -> None:
    tenant_id = uuid.uuid4()
    assert (await cache.claim(tenant_id, credit_request("a"))).outcome is ClaimOutcome.LOCKED
    await raw_redis.script_flush()
    claims = await asyncio.gather(
        cache.claim(tenant_id, credit_request("b")), cache.claim(tenant_id, credit_request("a"))
    )
    assert [claim.outcome for claim in claims] == [ClaimOutcome.LOCKED, ClaimOutcome.IN_USE]


async def test_script_arguments_reach_redis_as_redis_py_would_send_them(
    redis_client: RedisClient,
) -> None:
    script = redis_client.script("return {KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], #ARGV}")
    reply = await redis_client.run_script(script, ["k\u00e9y"], [b"\x00raw", "t\u00e9xt", 42, 0.5])
    assert reply == [b"k\xc3\xa9y", b"\x00raw", b"t\xc3\xa9xt", b"42", b"0.5", 4]


async def test_a_failing_script_call_fails_alone(redis_client: RedisClient) -> None:
    script = redis_client.script(
        "if ARGV[1] == 'bad' then return redis.error_reply('refused') end return ARGV[1]"
    )
    replies = await asyncio.gather(
        *(redis_client.run_script(script, [], [arg]) for arg in ("a", "bad", "c")),
        return_exceptions=True,
    )
    assert replies[0] == b"a" and replies[2] == b"c"
    assert isinstance(replies[1], RedisUnavailable) and replies[1].reason == "error"


@contextlib.asynccontextmanager
async def _held_replies_proxy(redis_url: str) -> AsyncIterator[tuple[str, asyncio.Event]]:
    """A TCP proxy to Redis that passes replies back only while the event is set."""
    host, _, port = redis_url.removeprefix("redis://").partition("/")[0].rpartition(":")
    passing = asyncio.Event()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, gated: bool) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                if gated:
                    await passing.wait()
                writer.write(data)
                await writer.drain()
        writer.close()

    async def serve(
        client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        redis_reader, redis_writer = await asyncio.open_connection(host, int(port))
        await asyncio.gather(
            pipe(client_reader, redis_writer, gated=False),
            pipe(redis_reader, client_writer, gated=True),
        )

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    proxy_port = server.sockets[0].getsockname()[1]
    try:
        yield f"redis://127.0.0.1:{proxy_port}/0", passing
    finally:
        passing.set()
        server.close()


async def test_replies_that_come_after_the_deadline_never_answer_a_later_call(
    endpoints: ServiceEndpoints,
) -> None:
    async with _held_replies_proxy(endpoints.redis_url) as (url, passing):
        client = RedisClient(url, timeout_seconds=0.2)
        echo = client.script("return ARGV[1]")
        passing.set()
        assert await client.run_script(echo, [], ["warm-up"]) == b"warm-up"  # script loaded
        passing.clear()
        late = [client.run_script(echo, [], [f"late-{n}"]) for n in range(3)]
        for reason in await asyncio.gather(*late, return_exceptions=True):
            assert isinstance(reason, RedisUnavailable) and reason.reason == "timeout"
        passing.set()  # the late replies are now on their way to a closed connection
        replies = await asyncio.gather(
            *(client.run_script(echo, [], [f"on-time-{n}"]) for n in range(3))
        )
        await client.close()
    assert replies == [b"on-time-0", b"on-time-1", b"on-time-2"]


async def test_sent_calls_keep_their_order_and_close_sends_what_is_queued(
    endpoints: ServiceEndpoints, raw_redis: redis_asyncio.Redis
) -> None:
    client = RedisClient(endpoints.redis_url, timeout_seconds=0.5)
    script = client.script("return redis.call('RPUSH', KEYS[1], ARGV[1])")
    failures: list[RedisUnavailable] = []
    key = f"walletd:test:order:{uuid.uuid4()}"
    for n in range(300):  # several pipelines' worth, none of them awaited
        client.send_script(script, [key], [str(n)], on_failure=failures.append)
    await client.close()
    assert await raw_redis.lrange(key, 0, -1) == [str(n).encode() for n in range(300)]
    assert failures == []


async def test_a_sent_call_that_fails_is_reported(redis_client: RedisClient) -> None:
    script = redis_client.script("return redis.error_reply('refused')")
    failures: list[RedisUnavailable] = []
    redis_client.send_script(script, [], [], on_failure=failures.append)
    assert await redis_client.run_script(redis_client.script("return 1"), [], []) == 1
    assert [failure.reason for failure in failures] == ["error"]


async def test_a_queued_finish_is_seen_by_the_next_claim_of_this_process(
    cache: IdempotencyCache, raw_redis: redis_asyncio.Redis
) -> None:
    await raw_redis.script_flush()
    assert await cache.load_scripts()  # as at start: the finish script is in Redis
    tenant_id, request = uuid.uuid4(), credit_request(f"k-{uuid.uuid4()}")
    first = await cache.claim(tenant_id, request)
    assert first.outcome is ClaimOutcome.LOCKED
    cache.finish(tenant_id, request, first, (201, b'{"id":"t2"}'))
    # Not awaited, yet queued ahead of the retry's claim: the retry replays.
    retry = await cache.claim(tenant_id, request)
    assert retry.outcome is ClaimOutcome.REPLAY
    assert retry.answer is not None and retry.answer.body == b'{"id":"t2"}'
    assert await raw_redis.exists(redis_keys(tenant_id, request.key)[1]) == 0


# ------------------------------------------------------------------------ Redis cache


async def test_claim_locks_then_reports_in_use_then_replays_the_cached_answer(
    cache: IdempotencyCache, redis_client: RedisClient, raw_redis: redis_asyncio.Redis
) -> None:
    tenant_id, request = uuid.uuid4(), credit_request(f"k-{uuid.uuid4()}")
    answer_key, lock_key = redis_keys(tenant_id, request.key)

    first = await cache.claim(tenant_id, request)
    assert first.outcome is ClaimOutcome.LOCKED
    assert await raw_redis.get(lock_key) == first.token.encode()
    assert 29_000 < await raw_redis.pttl(lock_key) <= 30_000
    assert (await cache.claim(tenant_id, request)).outcome is ClaimOutcome.IN_USE

    cache.finish(tenant_id, request, first, (201, b'{"id":"t1"}'))
    await redis_client.flush()
    assert await raw_redis.exists(lock_key) == 0
    assert DAY_SECONDS * 1000 - 5_000 < await raw_redis.pttl(answer_key) <= DAY_SECONDS * 1000

    replayed = await cache.claim(tenant_id, request)
    assert replayed.outcome is ClaimOutcome.REPLAY
    assert replayed.answer == StoredAnswer(
        "POST", "/v1/credits", request.request_hash, 201, b'{"id":"t1"}'
    )


async def test_finish_leaves_alone_a_lock_that_another_request_holds(
    cache: IdempotencyCache, redis_client: RedisClient, raw_redis: redis_asyncio.Redis
) -> None:
    tenant_id, request = uuid.uuid4(), credit_request(f"k-{uuid.uuid4()}")
    _, lock_key = redis_keys(tenant_id, request.key)
    mine = await cache.claim(tenant_id, request)
    await raw_redis.set(lock_key, "someone-else", px=30_000)  # ours expired, another took it

    cache.finish(tenant_id, request, mine, None)
    await redis_client.flush()

    assert await raw_redis.get(lock_key) == b"someone-else"


async def test_answer_over_256_kib_is_not_cached_but_the_lock_is_released(
    cache: IdempotencyCache, redis_client: RedisClient, raw_redis: redis_asyncio.Redis
) -> None:
    tenant_id, request = uuid.uuid4(), credit_request(f"k-{uuid.uuid4()}")
    answer_key, lock_key = redis_keys(tenant_id, request.key)
    claim = await cache.claim(tenant_id, request)

    cache.finish(tenant_id, request, claim, (200, b"x" * (MAX_CACHED_BODY_BYTES + 1)))
    await redis_client.flush()

    assert await raw_redis.exists(answer_key, lock_key) == 0


async def test_cached_entry_of_another_key_is_never_replayed(
    cache: IdempotencyCache, raw_redis: redis_asyncio.Redis
) -> None:
    tenant_id, request = uuid.uuid4(), credit_request(f"k-{uuid.uuid4()}")
    answer_key, _ = redis_keys(tenant_id, request.key)
    foreign = StoredAnswer("POST", "/v1/credits", request.request_hash, 201, b"{}")
    await raw_redis.set(answer_key, encode_entry(uuid.uuid4(), request.key, foreign))
    before = fallbacks("invalid_entry")

    claim = await cache.claim(tenant_id, request)

    assert claim.outcome is ClaimOutcome.UNAVAILABLE
    assert fallbacks("invalid_entry") == before + 1


async def test_claim_falls_back_and_is_counted_when_redis_is_unreachable() -> None:
    client = RedisClient(f"redis://127.0.0.1:{free_port()}/0", timeout_seconds=0.05)
    cache = IdempotencyCache(client, retention_seconds=DAY_SECONDS, lock_seconds=LOCK_SECONDS)
    before = fallbacks("connection"), fallbacks("circuit_open")
    try:
        outcomes = [
            (await cache.claim(uuid.uuid4(), credit_request("k"))).outcome for _ in range(4)
        ]
    finally:
        await client.close()
    assert outcomes == [ClaimOutcome.UNAVAILABLE] * 4
    assert (fallbacks("connection"), fallbacks("circuit_open")) == (before[0] + 3, before[1] + 1)


# ------------------------------------------------------------------ PostgreSQL decides


async def test_database_claim_refuses_the_key_while_the_first_transaction_runs(
    database: Database, database_url: str
) -> None:
    tenant_id = await new_tenant(database_url)
    request = credit_request("in-flight")
    claimed = IdempotentRequest(
        request.key, request.method, request.path, request.request_hash, claim_in_database=True
    )
    async with database.unit_of_work() as first:
        await claim_key(first.connection, tenant_id, claimed)
        async with database.unit_of_work() as second:
            with pytest.raises(IdempotencyKeyInUse):
                await claim_key(second.connection, tenant_id, claimed)
        other_tenant = await new_tenant(database_url)
        async with database.unit_of_work() as third:
            await claim_key(third.connection, other_tenant, claimed)  # no collision
        async with database.unit_of_work() as fourth:
            await claim_key(fourth.connection, tenant_id, request)  # Redis locked it: no-op
    async with database.unit_of_work() as after_commit:
        await claim_key(after_commit.connection, tenant_id, claimed)


async def test_a_key_binds_one_answer_and_a_second_insert_raises_duplicate_key(
    database: Database, database_url: str
) -> None:
    tenant_id = await new_tenant(database_url)
    request = credit_request(f"k-{uuid.uuid4()}")
    async with database.unit_of_work() as uow:
        await store_answer(uow.connection, tenant_id, request.row(201, b'{"n":1}'))
        await uow.commit()
    with pytest.raises(DuplicateKey):
        async with database.unit_of_work() as uow:
            await store_answer(uow.connection, tenant_id, request.row(201, b'{"n":2}'))
    async with database.connection() as connection:
        stored = await load_answer(connection, tenant_id, request.key)
    assert stored == StoredAnswer("POST", "/v1/credits", request.request_hash, 201, b'{"n":1}')


async def insert_key_aged(
    database: Database, tenant_id: uuid.UUID, key: str, age: timedelta
) -> None:
    async with database.connection() as connection:
        await connection.execute(
            "INSERT INTO idempotency_keys (tenant_id, key, method, path, request_hash,"
            " status_code, response_body, created_at)"
            " VALUES ($1, $2, 'POST', '/v1/credits', '\\x00', 201, '{}', now() - $3::interval)",
            tenant_id,
            key,
            age,
        )


async def surviving_keys(database: Database, tenant_id: uuid.UUID) -> list[str]:
    async with database.connection() as connection:
        rows = await connection.fetch(
            "SELECT key FROM idempotency_keys WHERE tenant_id = $1 ORDER BY key", tenant_id
        )
    return [row["key"] for row in rows]


async def test_prune_deletes_keys_past_the_retention_and_never_a_younger_one(
    database: Database, database_url: str
) -> None:
    tenant_id = await new_tenant(database_url)
    await insert_key_aged(database, tenant_id, "a-25h", timedelta(hours=25))
    await insert_key_aged(database, tenant_id, "b-24h-plus-1min", timedelta(hours=24, minutes=1))
    await insert_key_aged(database, tenant_id, "c-23h59m", timedelta(hours=23, minutes=59))
    await insert_key_aged(database, tenant_id, "d-new", timedelta(0))

    deleted = await prune_expired_keys(database, DAY_SECONDS, batch_size=1)

    assert deleted >= 2  # other tests' keys are all younger than a day
    assert await surviving_keys(database, tenant_id) == ["c-23h59m", "d-new"]


async def test_prune_yields_to_a_pruner_already_running_elsewhere(
    database: Database, database_url: str
) -> None:
    tenant_id = await new_tenant(database_url)
    await insert_key_aged(database, tenant_id, "old", timedelta(hours=30))
    async with database.unit_of_work() as other_process:
        await other_process.connection.execute(
            "SELECT pg_advisory_xact_lock($1)", int.from_bytes(b"wdidprun", "big")
        )
        deleted = await asyncio.wait_for(prune_expired_keys(database, DAY_SECONDS), 5)
    assert deleted == 0
    assert await surviving_keys(database, tenant_id) == ["old"]


async def test_background_pruner_deletes_expired_keys_until_cancelled(
    database: Database, database_url: str
) -> None:
    tenant_id = await new_tenant(database_url)
    await insert_key_aged(database, tenant_id, "expired", timedelta(hours=48))
    await insert_key_aged(database, tenant_id, "kept", timedelta(hours=1))
    pruner = asyncio.create_task(run_pruner(database, DAY_SECONDS, interval_seconds=1.0))
    try:
        for _ in range(300):  # the first run starts within 0.1-1.0 s
            if await surviving_keys(database, tenant_id) == ["kept"]:
                break
            await asyncio.sleep(0.01)
    finally:
        pruner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pruner
    assert await surviving_keys(database, tenant_id) == ["kept"]
    assert pruner.cancelled() is True

"""Latency that idempotency adds per request: the Redis path, and the fallback without Redis.

Runs the real app (its lifespan, real PostgreSQL and Redis over loopback) behind
``httpx.ASGITransport`` and sends ``--requests`` sequential ``POST /v1/credits`` per
scenario, then prints p50/p99 in milliseconds:

* ``execute``: a new key each time (the money moves once per request);
* ``replay``: the same key every time (the stored first answer comes back);

each with Redis healthy (``redis``), with no Redis configured (``no_redis``, the
baseline) and with Redis configured but down (``redis_down``: refused connections,
the circuit breaker open). Differences to ``no_redis`` are the added latency; the
modes alternate in rounds so that load from elsewhere hits all of them alike. Last,
the Redis calls alone (claim + finish of one request) are timed, healthy and down.

    .venv/bin/python bench/idempotency_latency.py --requests 2000

Without ``WALLETD_DATABASE_URL``/``WALLETD_REDIS_URL`` private servers are started
under ``.walletd/bench-idempotency-<pid>`` (PostgreSQL in fast mode: fsync off) and
stopped at the end. Results also go to ``bench/results/idempotency_latency.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson

from walletd.adapters.embedded import EmbeddedStack, free_port
from walletd.adapters.migrations import upgrade
from walletd.adapters.redis_client import RedisClient
from walletd.entrypoints.http.app import create_app
from walletd.service_layer.idempotency import IdempotentRequest
from walletd.service_layer.idempotency_cache import IdempotencyCache
from walletd.service_layer.tenants import create_api_key
from walletd.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS = REPO_ROOT / "bench" / "results" / "idempotency_latency.json"
MAX_REQUESTS = 100_000
WARMUP_REQUESTS = 50
ROUNDS = 10


async def create_database(server_url: str) -> str:
    base = server_url.rpartition("/")[0]
    name = f"walletd_bench_{uuid.uuid4().hex[:10]}"
    connection = await asyncpg.connect(f"{base}/postgres")
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    return f"{base}/{name}"


async def new_key(database_url: str) -> str:
    connection = await asyncpg.connect(database_url)
    try:
        created = await create_api_key(connection, f"bench-{uuid.uuid4().hex[:8]}", ["write"])
    finally:
        await connection.close()
    return created.secret


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    ordered = sorted(samples_ms)
    cuts = statistics.quantiles(ordered, n=100, method="inclusive")
    return {"p50": round(cuts[49], 3), "p99": round(cuts[98], 3), "n": len(ordered)}


async def timed(
    count: int, send: Callable[[int], Awaitable[httpx.Response]], offset: int
) -> list[float]:
    samples = []
    for index in range(offset, offset + count):
        started = time.perf_counter()
        response = await send(index)
        samples.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 201, response.text
    return samples


class Mode:
    """One app (one configuration) with its tenant, wallet and the two request kinds."""

    def __init__(self, database_url: str, redis_url: str | None) -> None:
        self.database_url = database_url
        self.app = create_app(Settings(database_url=database_url, redis_url=redis_url))
        self.run = uuid.uuid4().hex
        self.samples: dict[str, list[float]] = {"execute": [], "replay": []}

    async def open(self, stack: contextlib.AsyncExitStack) -> None:
        await stack.enter_async_context(self.app.router.lifespan_context(self.app))
        transport = httpx.ASGITransport(app=self.app)
        self.http = await stack.enter_async_context(
            httpx.AsyncClient(transport=transport, base_url="http://bench")
        )
        self.auth = {"Authorization": f"Bearer {await new_key(self.database_url)}"}
        created = await self.http.post(
            "/v1/wallets", json={"currency": "EUR"}, headers={**self.auth, "Idempotency-Key": "w"}
        )
        self.body = {"wallet_id": created.json()["id"], "amount": 1, "currency": "EUR"}

    def execute(self, index: int) -> Awaitable[httpx.Response]:
        headers = {**self.auth, "Idempotency-Key": f"{self.run}-{index}"}
        return self.http.post("/v1/credits", json=self.body, headers=headers)

    def replay(self, _: int) -> Awaitable[httpx.Response]:
        headers = {**self.auth, "Idempotency-Key": f"{self.run}-replayed"}
        return self.http.post("/v1/credits", json=self.body, headers=headers)


async def run_all(database_url: str, redis_url: str, count: int) -> dict[str, Any]:
    """Rounds that alternate the modes, so that noise from other load hits all of them."""
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    modes = {
        "no_redis": Mode(database_url, None),
        "redis": Mode(database_url, redis_url),
        "redis_down": Mode(database_url, dead_redis),
    }
    per_round = max(1, count // ROUNDS)
    async with contextlib.AsyncExitStack() as stack:
        for mode in modes.values():
            await mode.open(stack)
            await timed(WARMUP_REQUESTS, mode.execute, -WARMUP_REQUESTS)
            await timed(WARMUP_REQUESTS, mode.replay, 0)
        for round_index in range(ROUNDS):
            for mode in modes.values():
                offset = round_index * per_round
                mode.samples["execute"] += await timed(per_round, mode.execute, offset)
                mode.samples["replay"] += await timed(per_round, mode.replay, offset)
    results = {
        name: {kind: percentiles(samples) for kind, samples in mode.samples.items()}
        for name, mode in modes.items()
    }
    base = results["no_redis"]
    for name in ("redis", "redis_down"):
        for kind in ("execute", "replay"):
            row = results[name][kind]
            row["added_p50"] = round(row["p50"] - base[kind]["p50"], 3)
            row["added_p99"] = round(row["p99"] - base[kind]["p99"], 3)
    return results


async def time_cache_calls(redis_url: str, count: int) -> dict[str, Any]:
    """The Redis calls alone, per request: claim + finish (healthy), claim (breaker open)."""
    results: dict[str, Any] = {}
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    for name, url in (("redis", redis_url), ("redis_down", dead_redis)):
        client = RedisClient(url, timeout_seconds=0.05)
        cache = IdempotencyCache(client, retention_seconds=86_400, lock_seconds=30)
        tenant_id, samples = uuid.uuid4(), []
        try:
            for index in range(count):
                request = IdempotentRequest(f"bench-{index}", "POST", "/v1/credits", bytes(32))
                started = time.perf_counter()
                claim = await cache.claim(tenant_id, request)
                await cache.finish(tenant_id, request, claim, (201, b"{}"))
                samples.append((time.perf_counter() - started) * 1000)
        finally:
            await client.close()
        results[name] = percentiles(samples)
    return results


def print_table(results: dict[str, Any]) -> None:
    print(f"{'mode':<12}{'kind':<9}{'p50 ms':>9}{'p99 ms':>9}{'+p50 ms':>9}{'+p99 ms':>9}")
    calls = results.pop("cache_calls_only")
    for mode, kinds in results.items():
        for kind, row in kinds.items():
            added = f"{row.get('added_p50', 0.0):>9.3f}{row.get('added_p99', 0.0):>9.3f}"
            print(f"{mode:<12}{kind:<9}{row['p50']:>9.3f}{row['p99']:>9.3f}{added}")
    print("Redis calls alone per request (claim + finish):")
    for mode, row in calls.items():
        print(f"{mode:<12}{'calls':<9}{row['p50']:>9.3f}{row['p99']:>9.3f}")
    results["cache_calls_only"] = calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    args = parser.parse_args()
    count = max(100, min(args.requests, MAX_REQUESTS))
    stack = None
    database_server = os.environ.get("WALLETD_DATABASE_URL")
    redis_url = os.environ.get("WALLETD_REDIS_URL")
    run_dir = REPO_ROOT / ".walletd" / f"bench-idempotency-{os.getpid()}"
    if not database_server or not redis_url:
        stack = EmbeddedStack(
            run_dir, postgres=not database_server, redis=not redis_url, kafka=False, fast=True
        )
        endpoints = stack.start()
        database_server = database_server or endpoints.database_url
        redis_url = redis_url or endpoints.redis_url
    try:
        database_url = asyncio.run(create_database(database_server))
        upgrade(database_url)
        results = asyncio.run(run_all(database_url, redis_url, count))
        results["cache_calls_only"] = asyncio.run(time_cache_calls(redis_url, count))
    finally:
        if stack is not None:
            stack.stop()
            shutil.rmtree(run_dir, ignore_errors=True)
    print_table(results)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))


if __name__ == "__main__":
    main()

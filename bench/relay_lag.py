"""Measure the outbox relay: drain throughput and end-to-end lag under a steady load.

    .venv/bin/python bench/relay_lag.py [--rate 500] [--seconds 10] [--backlog 10000]

Uses the services named by ``WALLETD_*`` variables, else starts private ones under
``.walletd/bench-<pid>/``; creates a throw-away database. Two phases, the relay always
a separate process (the real ``walletd relay`` command, through ``cli_relay``):

1. throughput: ``--backlog`` transfers (2 events each) are written with no relay
   running, then a relay drains them; events/s = rows / (last - first published_at);
2. lag: a relay runs, ``--rate`` transfers/s are written for ``--seconds``, and a
   consumer process records when each event arrives; lag = arrival - outbox.created_at
   (the posting transaction's start), and also arrival - the writer seeing the commit.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import asyncpg

from walletd.adapters.embedded import resolve_services
from walletd.adapters.ledger_store import ensure_system_wallet
from walletd.adapters.migrations import upgrade
from walletd.adapters.postgres import Database
from walletd.domain.commands import Credit, Transfer
from walletd.service_layer.engine import Engine
from walletd.service_layer.tenants import create_api_key

REPO_ROOT = Path(__file__).resolve().parents[1]
RELAY_SCRIPT = (
    "import typer; from walletd.entrypoints import cli_relay; "
    "app = typer.Typer(add_completion=False); cli_relay.register(app); app()"
)
WALLETS = 200
WRITERS = 32


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rate", type=int, default=500, help="transfers per second (2 events each)"
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the lag phase")
    parser.add_argument("--backlog", type=int, default=10000, help="transfers in the drain phase")
    parser.add_argument("--batch-size", type=int, default=500, help="WALLETD_OUTBOX_BATCH_SIZE")
    return parser.parse_args()


async def create_database(server_url: str) -> str:
    base = server_url.rpartition("/")[0]
    name = f"walletd_bench_{uuid4().hex[:10]}"
    connection = await asyncpg.connect(f"{base}/postgres")
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    return f"{base}/{name}"


async def tenant_with_wallets(database: Database) -> tuple[UUID, list[UUID]]:
    async with database.connection() as connection:
        new_key = await create_api_key(connection, f"bench-{uuid4().hex}", ["read", "write"])
        wallets = [uuid4() for _ in range(WALLETS)]
        now = datetime.now(UTC)
        await connection.executemany(
            "INSERT INTO wallets (id, tenant_id, currency, created_at, updated_at)"
            " VALUES ($1, $2, 'EUR', $3, $3)",
            [(wallet, new_key.tenant_id, now) for wallet in wallets],
        )
        await ensure_system_wallet(connection, new_key.tenant_id, "EUR", now)
    return new_key.tenant_id, wallets


async def fund(engine: Engine, tenant_id: UUID, wallets: list[UUID]) -> None:
    """One credit per wallet, so that the load can be plain transfers."""
    for start in range(0, len(wallets), 100):
        chunk = wallets[start : start + 100]
        await engine.post(tenant_id, [Credit(wallet, 10**12, "EUR") for wallet in chunk])


async def post_at_rate(
    engine: Engine, tenant_id: UUID, wallets: list[UUID], total: int, rate: float | None
) -> dict[str, float]:
    """``total`` transfers (2 events each) from WRITERS tasks, paced to ``rate``/s if given.

    Returns the time each transaction's commit was seen by its writer (time.time()).
    """
    started = time.monotonic()
    committed: dict[str, float] = {}

    async def writer(offset: int) -> None:
        for index in range(offset, total, WRITERS):
            if rate:
                delay = started + index / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            source, target = wallets[index % WALLETS], wallets[(index * 7 + 1) % WALLETS]
            if source == target:
                target = wallets[(index + 1) % WALLETS]
            results = await engine.post(tenant_id, [Transfer(source, target, 1, "EUR")])
            committed[str(getattr(results[0], "id", ""))] = time.time()

    await asyncio.gather(*(writer(offset) for offset in range(WRITERS)))
    return committed


def start_relay(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", RELAY_SCRIPT, "relay"],
        env={**os.environ, **env}, cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def stop_relay(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


async def wait_drained(database: Database, tenant_id: UUID, timeout_seconds: float) -> None:
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        async with database.connection() as connection:
            left = await connection.fetchval(
                "SELECT count(*) FROM outbox WHERE tenant_id = $1 AND published_at IS NULL",
                tenant_id,
            )
        if left == 0:
            return
        await asyncio.sleep(0.1)
    raise SystemExit(f"outbox not drained within {timeout_seconds} s")


async def drain_phase(database: Database, env: dict[str, str], postings: int) -> dict[str, Any]:
    tenant_id, wallets = await tenant_with_wallets(database)
    engine = Engine(database)
    await fund(engine, tenant_id, wallets)
    await post_at_rate(engine, tenant_id, wallets, postings, None)
    relay = start_relay(env)
    try:
        await wait_drained(database, tenant_id, 300)
    finally:
        stop_relay(relay)
    async with database.connection() as connection:
        row = await connection.fetchrow(
            "SELECT count(*) AS rows, extract(epoch FROM max(published_at) - min(published_at))"
            " AS seconds FROM outbox WHERE tenant_id = $1",
            tenant_id,
        )
    assert row is not None
    seconds = float(row["seconds"]) or 1e-9
    return {"events": row["rows"], "seconds": round(seconds, 3),
            "events_per_second": round(row["rows"] / seconds)}  # fmt: skip


def consume(bootstrap: str, topic: str, tenant: str, ready: Any, stop: Any, results: Any) -> None:
    """Consumer process: record (event id, arrival time) of the tenant's events."""
    import orjson
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
    from confluent_kafka.admin import AdminClient

    partitions = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10)
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{uuid4().hex}",
                         "enable.auto.commit": False, "fetch.wait.max.ms": 5})  # fmt: skip
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING)
                     for p in partitions.topics[topic].partitions])  # fmt: skip
    arrivals: dict[str, float] = {}
    while not stop.is_set():
        messages = consumer.consume(1000, 0.05)
        if arrivals:
            ready.set()  # fetching for real: the warm-up events have arrived
        for message in messages:
            if message.error() is None:
                received = time.time()
                event = orjson.loads(message.value() or b"{}")
                if event["data"].get("tenant_id") == tenant:
                    arrivals.setdefault(event["id"], received)
    consumer.close()
    results.put(arrivals)


async def lag_phase(
    database: Database, env: dict[str, str], rate: int, seconds: float
) -> dict[str, Any]:
    tenant_id, wallets = await tenant_with_wallets(database)
    engine = Engine(database)
    await fund(engine, tenant_id, wallets)
    relay = start_relay(env)
    context = multiprocessing.get_context("spawn")
    ready, stop = context.Event(), context.Event()
    results = context.Queue()
    consumer = context.Process(
        target=consume,
        args=(env["WALLETD_KAFKA_BOOTSTRAP"], env["WALLETD_KAFKA_TOPIC"], str(tenant_id), ready,
              stop, results),
    )  # fmt: skip
    try:
        await asyncio.sleep(3)  # relay leads, topic exists
        consumer.start()
        # Warm-up (not measured): until the consumer fetches for real, then 2 s more.
        for _round in range(60):
            await post_at_rate(engine, tenant_id, wallets, max(1, rate // 2), rate)
            if ready.is_set():
                break
        await post_at_rate(engine, tenant_id, wallets, rate * 2, rate)
        committed = await post_at_rate(engine, tenant_id, wallets, int(rate * seconds), rate)
        await wait_drained(database, tenant_id, 120)
        await asyncio.sleep(2)
        stop.set()
        arrivals: dict[str, float] = await asyncio.to_thread(results.get, True, 60)
    finally:
        stop.set()
        consumer.join(timeout=30)
        stop_relay(relay)
    async with database.connection() as connection:
        rows = await connection.fetch(
            "SELECT event_id, extract(epoch FROM created_at) AS created,"
            " extract(epoch FROM published_at - created_at) AS marked,"
            " payload->'data'->>'transaction_id' AS transaction_id"
            " FROM outbox WHERE tenant_id = $1"
            " AND payload->'data'->>'transaction_type' = 'transfer'",
            tenant_id,
        )
    rows = [row for row in rows if row["transaction_id"] in committed]
    lags_ms = sorted((arrivals[str(r["event_id"])] - float(r["created"])) * 1000 for r in rows)
    assert len(rows) == 2 * len(committed), "two events per transfer"
    from_commit_ms = [
        (arrivals[str(r["event_id"])] - committed[r["transaction_id"]]) * 1000 for r in rows
    ]
    commit_cut = statistics.quantiles(from_commit_ms, n=100)
    cut = statistics.quantiles(lags_ms, n=100)
    marked = statistics.quantiles([float(r["marked"]) * 1000 for r in rows], n=100)
    return {"events": len(rows), "events_per_second": round(len(rows) / seconds),
            "lag_ms_p50": round(cut[49], 1), "lag_ms_p99": round(cut[98], 1),
            "lag_ms_max": round(lags_ms[-1], 1),
            "from_commit_ms_p50": round(commit_cut[49], 1),
            "from_commit_ms_p99": round(commit_cut[98], 1),
            "marked_published_ms_p50": round(marked[49], 1),
            "marked_published_ms_p99": round(marked[98], 1)}  # fmt: skip


async def run(arguments: argparse.Namespace, database_url: str, bootstrap: str) -> None:
    url = await create_database(database_url)
    upgrade(url)
    env = {
        "WALLETD_DATABASE_URL": url,
        "WALLETD_KAFKA_BOOTSTRAP": bootstrap,
        "WALLETD_KAFKA_TOPIC": f"walletd.bench.{uuid4().hex[:8]}",
        "WALLETD_OUTBOX_BATCH_SIZE": str(arguments.batch_size),
        "WALLETD_LOG_LEVEL": "WARNING",
    }
    database = Database(url, min_size=4, max_size=WRITERS + 4)
    await database.connect()
    try:
        print("drain:", await drain_phase(database, env, arguments.backlog), flush=True)
        lag = await lag_phase(database, env, arguments.rate, arguments.seconds)
        print(f"lag at {arguments.rate} transfers/s:", lag, flush=True)
    finally:
        await database.close()


def main() -> None:
    arguments = parse_arguments()
    run_dir = REPO_ROOT / ".walletd" / f"bench-relay-{os.getpid()}"
    endpoints, stack = resolve_services(run_dir, fast=True)
    try:
        asyncio.run(run(arguments, endpoints.database_url, endpoints.kafka_bootstrap))
    finally:
        stack.stop()
        shutil.rmtree(run_dir, ignore_errors=True)


if __name__ == "__main__":
    main()

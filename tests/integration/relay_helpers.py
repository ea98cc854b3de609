"""Helpers for the relay tests: tenants with wallets, posting streams, a topic reader.

The broker (tansu) reports wrong high watermarks and joins groups slowly, so the
reader assigns every partition explicitly from the beginning and stops when it has
the expected number of events or a deadline passes.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from walletd.adapters.ledger_store import ensure_system_wallet
from walletd.adapters.postgres import Database
from walletd.domain.book import ItemFailure
from walletd.domain.commands import Credit, PostingCommand, Transfer
from walletd.service_layer.engine import Engine
from walletd.service_layer.relay import OutboxRow
from walletd.service_layer.tenants import create_api_key

REPO_ROOT = Path(__file__).resolve().parents[2]
RELAY_PROCESS = Path(__file__).with_name("relay_process.py")


@dataclass(frozen=True)
class ReceivedEvent:
    """One record read back from the topic, with the time the reader got it."""

    key: str
    event: dict[str, Any]
    partition: int
    offset: int
    received_at: float  # time.time()

    @property
    def id(self) -> str:
        return str(self.event["id"])

    @property
    def data(self) -> dict[str, Any]:
        data: dict[str, Any] = self.event["data"]
        return data


async def tenant_with_wallets(
    database: Database, count: int, currency: str = "EUR"
) -> tuple[UUID, list[UUID]]:
    """A fresh tenant and ``count`` of its user wallets."""
    async with database.connection() as connection:
        new_key = await create_api_key(
            connection, f"relay-{uuid4().hex}", ["read", "write", "admin"]
        )
        wallets = [uuid4() for _ in range(count)]
        now = datetime.now(UTC)
        await connection.executemany(
            "INSERT INTO wallets (id, tenant_id, currency, created_at, updated_at)"
            " VALUES ($1, $2, $3, $4, $4)",
            [(wallet, new_key.tenant_id, currency, now) for wallet in wallets],
        )
        # The tenant's system wallet, made here once: concurrent first uses race.
        await ensure_system_wallet(connection, new_key.tenant_id, currency, now)
    return new_key.tenant_id, wallets


def stream_commands(
    wallets: Sequence[UUID], index: int, currency: str = "EUR"
) -> list[PostingCommand]:
    """Posting ``index`` of a stream: a credit and a transfer to the next wallet."""
    source = wallets[index % len(wallets)]
    target = wallets[(index + 1) % len(wallets)]
    return [
        Credit(source, 100 + index, currency),
        Transfer(source, target, 50 + index, currency),
    ]


async def post_stream(
    engine: Engine,
    tenant_id: UUID,
    wallets: Sequence[UUID],
    count: int,
    *,
    start: int = 0,
    interval_seconds: float = 0.0,
) -> int:
    """Post ``count`` credit+transfer pairs; the number of entries written (4 per pair)."""
    for index in range(start, start + count):
        results = await engine.post(tenant_id, stream_commands(wallets, index))
        failures = [result for result in results if isinstance(result, ItemFailure)]
        assert not failures, failures
        if interval_seconds:
            await asyncio.sleep(interval_seconds)
    return count * 4


async def tenant_entries(database: Database, tenant_id: UUID) -> list[dict[str, Any]]:
    """The tenant's ledger entries with their transaction, for comparison with events."""
    async with database.connection() as connection:
        rows = await connection.fetch(
            """
            SELECT e.id, e.transaction_id, e.wallet_id, e.currency, e.amount, e.balance_after,
                   e.wallet_version, t.type AS transaction_type
            FROM entries e JOIN transactions t ON t.id = e.transaction_id
            WHERE t.tenant_id = $1
            ORDER BY e.wallet_id, e.wallet_version
            """,
            tenant_id,
        )
    return [dict(row) for row in rows]


async def unpublished_count(database: Database, tenant_id: UUID) -> int:
    async with database.connection() as connection:
        count: int = await connection.fetchval(
            "SELECT count(*) FROM outbox WHERE tenant_id = $1 AND published_at IS NULL", tenant_id
        )
    return count


async def outbox_event_ids(database: Database, tenant_id: UUID) -> list[str]:
    """The ids of the events the tenant's outbox rows publish, in outbox order."""
    async with database.connection() as connection:
        rows = await connection.fetch(
            "SELECT id, event_id, message_key, event_type, payload FROM outbox"
            " WHERE tenant_id = $1 ORDER BY id",
            tenant_id,
        )
    return [str(event["id"]) for row in rows for _, event in OutboxRow.from_record(row).events]


def read_topic(
    bootstrap: str,
    topic: str,
    *,
    expected: int,
    deadline_seconds: float,
    keep: Callable[[dict[str, Any]], bool] = lambda event: True,
) -> list[ReceivedEvent]:
    """Read ``topic`` from the start until ``expected`` distinct kept event ids or the deadline."""
    partitions = _partitions(bootstrap, topic)
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"relay-test-{uuid4().hex}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "log_level": 0,
        }
    )
    consumer.assign(
        [TopicPartition(topic, partition, OFFSET_BEGINNING) for partition in partitions]
    )
    received: list[ReceivedEvent] = []
    distinct: set[str] = set()
    deadline = time.monotonic() + deadline_seconds
    try:
        while len(distinct) < expected and time.monotonic() < deadline:
            for message in consumer.consume(1000, 0.2):
                if message.error() is not None:
                    continue
                event = orjson.loads(message.value())
                if keep(event):
                    distinct.add(str(event["id"]))
                    received.append(
                        ReceivedEvent(
                            message.key().decode(),
                            event,
                            message.partition(),
                            message.offset(),
                            time.time(),
                        )
                    )
    finally:
        consumer.close()
    return received


async def tenant_events(
    bootstrap: str | None, topic: str, tenant_id: UUID, *, expected: int, deadline_seconds: float
) -> list[ReceivedEvent]:
    """:func:`read_topic` in a thread, keeping the events of ``tenant_id`` only."""
    assert bootstrap is not None
    return await asyncio.to_thread(
        read_topic,
        bootstrap,
        topic,
        expected=expected,
        deadline_seconds=deadline_seconds,
        keep=of_tenant(tenant_id),
    )


def _partitions(bootstrap: str, topic: str) -> list[int]:
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        metadata = admin.list_topics(timeout=5)
        if topic in metadata.topics and metadata.topics[topic].partitions:
            return sorted(metadata.topics[topic].partitions)
        time.sleep(0.2)
    raise AssertionError(f"topic {topic} never appeared")


def of_tenant(tenant_id: UUID) -> Callable[[dict[str, Any]], bool]:
    return lambda event: event.get("data", {}).get("tenant_id") == str(tenant_id)


def first_occurrences(events: Sequence[ReceivedEvent]) -> list[ReceivedEvent]:
    """Each event id once, at its first arrival (topic order within a partition)."""
    ordered = sorted(events, key=lambda received: (received.partition, received.offset))
    seen: set[str] = set()
    firsts = []
    for received in ordered:
        if received.id not in seen:
            seen.add(received.id)
            firsts.append(received)
    return firsts


def assert_wallet_order(events: Sequence[ReceivedEvent]) -> None:
    """Per wallet, first occurrences arrive in strictly increasing wallet_version, no gaps."""
    by_wallet: dict[str, list[ReceivedEvent]] = {}
    for received in first_occurrences(events):
        by_wallet.setdefault(received.key, []).append(received)
    for wallet, arrivals in by_wallet.items():
        assert len({received.partition for received in arrivals}) == 1, wallet
        versions = [received.data["wallet_version"] for received in arrivals]
        assert versions == list(range(versions[0], versions[0] + len(versions))), (wallet, versions)


class RelayProcess:
    """``tests/integration/relay_process.py`` (the real ``walletd relay`` command) as a child."""

    def __init__(self, env: dict[str, str], *extra_args: str) -> None:
        self.log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"walletd-relay-{uuid4().hex}.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, str(RELAY_PROCESS), "relay", *extra_args],
            env={**os.environ, **env},
            cwd=REPO_ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def kill(self) -> None:
        """SIGKILL: no clean-up at all, the lock goes with the closed connection."""
        if self.process.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self, timeout_seconds: float = 15.0) -> int:
        """SIGTERM and wait for a clean exit; SIGKILL if it does not come."""
        if self.process.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_seconds)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()
        return self.process.returncode

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def cleanup(self) -> None:
        self.stop()
        self.log_path.unlink(missing_ok=True)

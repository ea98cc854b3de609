"""The outbox relay against real PostgreSQL and a real Kafka-protocol broker.

Each test posts money movements for a fresh tenant and reads its own topic back:
every entry has its event, per-wallet order holds, rows are marked published only
after the broker acknowledged them, a killed relay loses nothing, a paused broker
delays but loses nothing, one relay of two publishes, and a replay repeats ids.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.relay_helpers import (
    RELAY_PROCESS,
    REPO_ROOT,
    RelayProcess,
    assert_wallet_order,
    outbox_event_ids,
    post_stream,
    read_topic,
    stream_commands,
    tenant_entries,
    tenant_events,
    tenant_with_wallets,
    unpublished_count,
)
from walletd.adapters.embedded import EmbeddedStack, ServiceEndpoints, free_port
from walletd.adapters.kafka import EventPublisher, ensure_topic
from walletd.adapters.postgres import Database
from walletd.domain.commands import PostingCommand
from walletd.service_layer.engine import Engine
from walletd.service_layer.relay import (
    ReplayFilter,
    delete_retained,
    relay_leader,
    replay_events,
    run_relay,
)
from walletd.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture
def topic() -> str:
    return f"walletd.test.{uuid4()}"


@pytest.fixture
def settings(database_url: str, endpoints: ServiceEndpoints, topic: str) -> Settings:
    return Settings(
        database_url=database_url,
        kafka_bootstrap=endpoints.kafka_bootstrap,
        kafka_topic=topic,
        outbox_batch_size=50,
        outbox_poll_seconds=0.2,
        kafka_timeout_seconds=3.0,
    )


@pytest.fixture
def relay_env(settings: Settings) -> dict[str, str]:
    assert settings.kafka_bootstrap is not None
    return {
        "WALLETD_DATABASE_URL": settings.database_url,
        "WALLETD_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "WALLETD_KAFKA_TOPIC": settings.kafka_topic,
        "WALLETD_OUTBOX_BATCH_SIZE": "20",
        "WALLETD_OUTBOX_POLL_SECONDS": "0.2",
        "WALLETD_KAFKA_TIMEOUT_SECONDS": "3",
        "WALLETD_LOG_LEVEL": "INFO",
    }


@pytest.fixture
def relay_processes() -> Iterator[list[RelayProcess]]:
    """Relay children started by a test; each is stopped by PID afterwards."""
    started: list[RelayProcess] = []
    yield started
    for process in started:
        process.cleanup()


@contextlib.asynccontextmanager
async def relay_task(settings: Settings) -> AsyncIterator[asyncio.Task[None]]:
    """The relay in this process, stopped through its stop event."""
    stop = asyncio.Event()
    task = asyncio.create_task(run_relay(settings, stop))
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=15)


async def eventually(
    check: Callable[[], Awaitable[bool]], timeout_seconds: float, what: str
) -> float:
    """Poll ``check`` every 50 ms; the seconds it took; fail after ``timeout_seconds``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_seconds:
        if await check():
            return time.monotonic() - started
        await asyncio.sleep(0.05)
    raise AssertionError(f"not within {timeout_seconds} s: {what}")


async def drained(database: Database, tenant_id: UUID) -> bool:
    return await unpublished_count(database, tenant_id) == 0


def metrics_of(port: int) -> dict[str, float]:
    response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


async def leader_application(database: Database) -> str | None:
    async with database.connection() as connection:
        leader = await relay_leader(connection)
    return None if leader is None else leader[1]


async def test_every_entry_has_exactly_one_event_in_wallet_order(
    database: Database, settings: Settings
) -> None:
    tenant_id, wallets = await tenant_with_wallets(database, 6)
    engine = Engine(database)
    async with relay_task(settings):
        # Four concurrent writers over the same wallets: commit order differs from id order.
        counts = await asyncio.gather(
            *(post_stream(engine, tenant_id, wallets, 25, start=25 * n) for n in range(4))
        )
        expected = sum(counts)
        received = await tenant_events(
            settings.kafka_bootstrap,
            settings.kafka_topic,
            tenant_id,
            expected=expected,
            deadline_seconds=20,
        )
        await eventually(lambda: drained(database, tenant_id), 5, "all rows marked published")

    entries = await tenant_entries(database, tenant_id)
    assert len(entries) == expected == 400
    assert len(received) == expected, "each entry exactly once"
    assert sorted(r.id for r in received) == sorted(await outbox_event_ids(database, tenant_id))
    by_version = {(str(e["wallet_id"]), e["wallet_version"]): e for e in entries}
    for arrival in received:
        event, data = arrival.event, arrival.data
        entry = by_version.pop((data["wallet_id"], data["wallet_version"]))
        assert arrival.key == event["subject"] == data["wallet_id"]
        assert event["specversion"] == "1.0"
        assert event["datacontenttype"] == "application/json"
        assert event["type"] == ("wallet.credited" if entry["amount"] > 0 else "wallet.debited")
        assert data["transaction_id"] == str(entry["transaction_id"])
        assert data["transaction_type"] == entry["transaction_type"]
        assert data["amount"] == entry["amount"]
        assert data["balance_after"] == entry["balance_after"]
        assert data["currency"] == entry["currency"]
        assert data["tenant_id"] == str(tenant_id)
    assert by_version == {}
    assert_wallet_order(received)


async def test_relay_killed_mid_stream_loses_nothing(
    database: Database,
    settings: Settings,
    relay_env: dict[str, str],
    relay_processes: list[RelayProcess],
) -> None:
    tenant_id, wallets = await tenant_with_wallets(database, 5)
    engine = Engine(database)
    first = RelayProcess(relay_env)
    relay_processes.append(first)
    await eventually(lambda: _is_leader(database, first), 15, "the first relay leads")

    stream = asyncio.create_task(
        post_stream(engine, tenant_id, wallets, 150, interval_seconds=0.01)
    )
    await eventually(lambda: _published_some(database, tenant_id), 10, "some events published")
    first.kill()
    assert not stream.done(), "the kill must land in the middle of the stream"
    second = RelayProcess(relay_env)
    relay_processes.append(second)
    expected = await stream
    received = await tenant_events(
        settings.kafka_bootstrap,
        settings.kafka_topic,
        tenant_id,
        expected=expected,
        deadline_seconds=25,
    )
    assert {r.id for r in received} == set(await outbox_event_ids(database, tenant_id))
    assert len({r.id for r in received}) == expected == 600
    assert_wallet_order(received)
    await eventually(lambda: drained(database, tenant_id), 5, "all rows marked published")
    assert second.stop() == 0, second.output()


async def _is_leader(database: Database, relay: RelayProcess) -> bool:
    return await leader_application(database) == f"walletd-relay:{relay.pid}"


async def _published_some(database: Database, tenant_id: UUID) -> bool:
    async with database.connection() as connection:
        count: int = await connection.fetchval(
            "SELECT count(*) FROM outbox WHERE tenant_id = $1 AND published_at IS NOT NULL",
            tenant_id,
        )
    return count >= 40


async def test_paused_broker_delays_events_and_loses_none(
    database: Database, settings: Settings, stack: EmbeddedStack
) -> None:
    assert stack.kafka is not None
    assert settings.kafka_bootstrap is not None
    tenant_id, wallets = await tenant_with_wallets(database, 4)
    engine = Engine(database)
    # Short broker waits: the relay gives up on its batch (6 waits of 0.5 s) during the pause.
    settings = settings.model_copy(update={"kafka_timeout_seconds": 0.5})
    async with relay_task(settings):
        before = await post_stream(engine, tenant_id, wallets, 5)
        await eventually(lambda: drained(database, tenant_id), 10, "first events published")
        stack.kafka.pause()
        try:
            started = time.monotonic()
            during = await post_stream(engine, tenant_id, wallets, 50, start=5)
            assert time.monotonic() - started < 5, "postings do not wait for the broker"
            await asyncio.sleep(4.0)
            # Nothing is marked without the broker's acknowledgement, even after giving up.
            # 200 events in 100 rows: one row per posted transaction, two entries each.
            assert await unpublished_count(database, tenant_id) * 2 == during == 200
        finally:
            stack.kafka.resume()
        await eventually(lambda: drained(database, tenant_id), 20, "backlog drained")
        received = await tenant_events(
            settings.kafka_bootstrap,
            settings.kafka_topic,
            tenant_id,
            expected=before + during,
            deadline_seconds=15,
        )
    assert {r.id for r in received} == set(await outbox_event_ids(database, tenant_id))
    assert len({r.id for r in received}) == 220
    assert_wallet_order(received)


async def test_one_relay_of_two_publishes_and_standby_takes_over(
    database: Database,
    settings: Settings,
    relay_env: dict[str, str],
    relay_processes: list[RelayProcess],
) -> None:
    tenant_id, wallets = await tenant_with_wallets(database, 4)
    engine = Engine(database)
    ports = free_port(), free_port()
    while ports[1] == ports[0]:
        ports = ports[0], free_port()
    leader = RelayProcess(relay_env, "--metrics-port", str(ports[0]))
    relay_processes.append(leader)
    await eventually(lambda: _is_leader(database, leader), 15, "the first relay leads")
    standby = RelayProcess(relay_env, "--metrics-port", str(ports[1]))
    relay_processes.append(standby)
    await eventually(lambda: _serves_metrics(ports[1]), 15, "the standby is up")

    first_batch = await post_stream(engine, tenant_id, wallets, 20)
    await eventually(lambda: drained(database, tenant_id), 10, "published by the leader")
    assert await _is_leader(database, leader)
    leader_metrics, standby_metrics = metrics_of(ports[0]), metrics_of(ports[1])
    assert leader_metrics["walletd_relay_leader"] == 1
    assert leader_metrics["walletd_relay_events_published_total"] >= first_batch
    assert standby_metrics["walletd_relay_leader"] == 0
    assert standby_metrics["walletd_relay_events_published_total"] == 0

    leader.kill()
    takeover_seconds = await eventually(
        lambda: _is_leader(database, standby), 5, "the standby takes over"
    )
    second_batch = await post_stream(engine, tenant_id, wallets, 20, start=20)
    await eventually(lambda: drained(database, tenant_id), 10, "published by the new leader")
    assert metrics_of(ports[1])["walletd_relay_leader"] == 1
    assert metrics_of(ports[1])["walletd_relay_events_published_total"] >= second_batch
    assert takeover_seconds < 5
    received = await tenant_events(
        settings.kafka_bootstrap,
        settings.kafka_topic,
        tenant_id,
        expected=first_batch + second_batch,
        deadline_seconds=15,
    )
    assert len({r.id for r in received}) == 160
    assert_wallet_order(received)
    assert standby.stop() == 0, standby.output()


async def _serves_metrics(port: int) -> bool:
    try:
        await asyncio.to_thread(metrics_of, port)
    except httpx.HTTPError:
        return False
    return True


async def test_replay_republishes_the_same_events(
    database: Database, settings: Settings, endpoints: ServiceEndpoints, relay_env: dict[str, str]
) -> None:
    bootstrap = endpoints.kafka_bootstrap
    tenant_id, wallets = await tenant_with_wallets(database, 3)
    engine = Engine(database)
    since = datetime.now(UTC) - timedelta(seconds=1)
    async with relay_task(settings):
        expected = await post_stream(engine, tenant_id, wallets, 10)
        await eventually(lambda: drained(database, tenant_id), 10, "published")
    original = await tenant_events(
        bootstrap, settings.kafka_topic, tenant_id, expected=expected, deadline_seconds=15
    )

    replay_topic = f"walletd.test.{uuid4()}"
    await asyncio.to_thread(ensure_topic, bootstrap, replay_topic, timeout_seconds=5)
    publisher = EventPublisher(bootstrap, replay_topic, timeout_seconds=5)
    try:
        sent = await replay_events(
            database, publisher, ReplayFilter(since), batch_size=7, max_events=100_000
        )
    finally:
        publisher.close()
    replayed = await tenant_events(
        bootstrap, replay_topic, tenant_id, expected=expected, deadline_seconds=15
    )
    assert sent >= expected
    assert {r.id: r.event for r in replayed} == {r.id: r.event for r in original}
    assert len(replayed) == expected
    assert_wallet_order(replayed)

    wallet = wallets[0]
    cli_topic = f"walletd.test.{uuid4()}"
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, str(RELAY_PROCESS), "events", "replay", "--from", since.isoformat(),
         "--wallet", str(wallet)],
        env={**os.environ, **relay_env, "WALLETD_KAFKA_TOPIC": cli_topic},
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    of_wallet = [r for r in original if r.key == str(wallet)]
    assert (
        result.stdout.strip().splitlines()[-1] == f"replayed {len(of_wallet)} events to {cli_topic}"
    )
    replayed_wallet = await asyncio.to_thread(
        read_topic, bootstrap, cli_topic, expected=len(of_wallet), deadline_seconds=15
    )
    assert sorted(r.id for r in replayed_wallet) == sorted(r.id for r in of_wallet)
    assert_wallet_order(replayed_wallet)


@pytest.mark.parametrize(
    ("override", "dependency"),
    [
        (("--database-url", "postgresql://walletd@127.0.0.1:1/walletd"), "PostgreSQL"),
        (("--kafka-bootstrap", "127.0.0.1:1"), "Kafka"),
    ],
)
def test_relay_start_without_a_dependency_is_one_line_and_exit_1(
    relay_env: dict[str, str], override: tuple[str, str], dependency: str
) -> None:
    result = subprocess.run(
        [sys.executable, str(RELAY_PROCESS), "relay", *override],
        env={**os.environ, **relay_env, "WALLETD_KAFKA_TIMEOUT_SECONDS": "1"},
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("walletd relay: ")
    assert dependency in lines[0]
    assert "Traceback" not in result.stdout + result.stderr


async def test_replay_of_unknown_wallet_sends_nothing(
    database: Database, settings: Settings
) -> None:
    assert settings.kafka_bootstrap is not None
    await asyncio.to_thread(
        ensure_topic, settings.kafka_bootstrap, settings.kafka_topic, timeout_seconds=5
    )
    publisher = EventPublisher(settings.kafka_bootstrap, settings.kafka_topic, timeout_seconds=5)
    try:
        since = datetime.now(UTC) - timedelta(hours=1)
        sent = await replay_events(database, publisher, ReplayFilter(since, wallet_id=uuid4()))
    finally:
        publisher.close()
    assert sent == 0


async def test_retention_deletes_only_old_published_rows(database: Database) -> None:
    tenant_id, wallets = await tenant_with_wallets(database, 2)
    await post_stream(Engine(database), tenant_id, wallets, 6)  # 12 rows (one per transaction)
    async with database.connection() as connection:
        ids = [row["id"] for row in await connection.fetch(
            "SELECT id FROM outbox WHERE tenant_id = $1 ORDER BY id", tenant_id
        )]  # fmt: skip
        # 8 rows published 10 days ago, 1 old but never published, 3 published just now.
        await connection.execute(
            "UPDATE outbox SET created_at = now() - interval '10 days',"
            " published_at = now() - interval '10 days' WHERE id = ANY($1::bigint[])",
            ids[:8],
        )
        await connection.execute(
            "UPDATE outbox SET created_at = now() - interval '10 days' WHERE id = $1", ids[8]
        )
        await connection.execute(
            "UPDATE outbox SET published_at = now() WHERE id = ANY($1::bigint[])", ids[9:]
        )
    deleted = await delete_retained(database, retention_hours=24 * 7)
    async with database.connection() as connection:
        left = [row["id"] for row in await connection.fetch(
            "SELECT id FROM outbox WHERE tenant_id = $1 ORDER BY id", tenant_id
        )]  # fmt: skip
    assert left == ids[8:]
    assert deleted >= 8


async def test_leader_whose_session_is_cut_leads_again_and_loses_nothing(
    database: Database, settings: Settings
) -> None:
    tenant_id, wallets = await tenant_with_wallets(database, 4)
    engine = Engine(database)
    async with relay_task(settings):
        first = await post_stream(engine, tenant_id, wallets, 10)
        await eventually(lambda: drained(database, tenant_id), 10, "first stream published")
        async with database.connection() as connection:
            leader = await relay_leader(connection)
            assert leader is not None
            # The leader reads and marks on this very session: cut it mid-flight.
            assert await connection.fetchval("SELECT pg_terminate_backend($1)", leader[0])
        second = await post_stream(engine, tenant_id, wallets, 10, start=10)
        await eventually(lambda: drained(database, tenant_id), 15, "published after the cut")
        async with database.connection() as connection:
            new_leader = await relay_leader(connection)
        assert new_leader is not None and new_leader[0] != leader[0]
    received = await tenant_events(
        settings.kafka_bootstrap,
        settings.kafka_topic,
        tenant_id,
        expected=first + second,
        deadline_seconds=15,
    )
    assert {r.id for r in received} == set(await outbox_event_ids(database, tenant_id))
    assert_wallet_order(received)


async def test_relay_lingers_after_a_busy_batch_only(
    database: Database, settings: Settings
) -> None:
    linger = 2.0
    lingering = settings.model_copy(update={"outbox_linger_seconds": linger})
    tenant_id, wallets = await tenant_with_wallets(database, 4)
    engine = Engine(database)

    async def publish_seconds(commands: list[PostingCommand]) -> float:
        await engine.post(tenant_id, commands)
        return await eventually(lambda: drained(database, tenant_id), 10, "published")

    async with relay_task(lingering):
        busy = [command for index in range(10) for command in stream_commands(wallets, index)]
        await publish_seconds(busy)  # 20 rows (40 events) in one commit: a busy batch
        after_busy = await publish_seconds(stream_commands(wallets, 5)[:1])
        after_quiet = await publish_seconds(stream_commands(wallets, 6)[:1])
    assert after_busy >= linger / 2, "the batch after a busy one waits for more to gather"
    assert after_quiet < linger / 2, "after a quiet batch the next one goes at once"

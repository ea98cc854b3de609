"""The outbox relay: publishes committed outbox rows to Kafka, in id order, at least once.

Several relays may run; the one holding a PostgreSQL session advisory lock (on a
dedicated connection that also LISTENs on ``walletd_outbox``) publishes, the others
retry the lock every second. The leader loops on that same connection: read up to
``outbox_batch_size`` unpublished rows by id, hand them to the idempotent producer,
wait (bounded) for the broker's acknowledgements, then mark published the
acknowledged prefix only. A read that succeeds on the lock's own session proves the
lock is still held, so a busy cycle costs two round trips and no pool checkout.
Anything after the first unacknowledged row is abandoned and read again after a
bounded exponential backoff, so no row is ever skipped and, for one message key, a
row is never published before a smaller id of that key. After a short but busy
batch the leader lingers (``outbox_linger_seconds``) so that the next one is bigger.

:func:`replay_events` republishes stored events (same ids, same payloads) in id order.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
import orjson
import structlog

from walletd.adapters import relay_metrics
from walletd.adapters.kafka import BrokerUnavailable, EventPublisher, OutboundMessage, ensure_topic
from walletd.adapters.postgres import UNAVAILABLE_ERRORS, Database, init_connection
from walletd.domain.events import POSTING_ROW, expand_posting
from walletd.errors import Unavailable
from walletd.settings import Settings

logger = structlog.get_logger("walletd.relay")

# pg_try_advisory_lock key of the publisher role: "wdrelay" in ASCII.
RELAY_LOCK_KEY = 0x77_64_72_65_6C_61_79
NOTIFY_CHANNEL = "walletd_outbox"
LOCK_RETRY_SECONDS = 1.0
LOCK_QUERY_TIMEOUT_SECONDS = 2.0
# One wait slice: how quickly a stop request is seen while the broker is silent.
WAIT_SLICE_SECONDS = 1.0
# Waits of kafka_timeout_seconds for one batch before abandoning its unacknowledged rest.
MAX_WAIT_ATTEMPTS = 6
# A short batch at least this big means steady traffic: linger before the next read.
LINGER_MIN_ROWS = 16
BACKOFF_INITIAL_SECONDS = 0.1
BACKOFF_MAX_SECONDS = 5.0
GAUGE_REFRESH_SECONDS = 1.0
RETENTION_INTERVAL_SECONDS = 60.0
RETENTION_BATCH_SIZE = 1000
RETENTION_MAX_BATCHES = 10

FETCH_UNPUBLISHED = """
SELECT id, event_id, message_key, event_type, payload
FROM outbox
WHERE published_at IS NULL
ORDER BY id
LIMIT $1
"""

MARK_PUBLISHED = """
UPDATE outbox SET published_at = now()
WHERE id = ANY($1::bigint[]) AND published_at IS NULL
"""

DELETE_RETAINED = """
DELETE FROM outbox
WHERE id IN (
    SELECT id FROM outbox
    WHERE created_at < now() - make_interval(secs => $1)
      AND published_at < now() - make_interval(secs => $1)
    ORDER BY created_at
    LIMIT $2
)
"""

SCHEMA_PRESENT = "SELECT to_regclass('outbox') IS NOT NULL"

LEADER_BACKEND = """
SELECT l.pid, a.application_name
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted
  AND l.classid = $1 AND l.objid = $2 AND l.objsubid = 1
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""

DATABASE_ERRORS: tuple[type[BaseException], ...] = (
    *UNAVAILABLE_ERRORS,
    asyncpg.PostgresError,
    Unavailable,
)


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """One stored row: its outbox id and the (key, CloudEvent) messages it publishes.

    A row is one CloudEvent, or a posted transaction's entry events stored as one row
    (:data:`~walletd.domain.events.POSTING_ROW`), expanded here.
    """

    id: int
    events: list[tuple[str, dict[str, Any]]]

    @classmethod
    def from_record(cls, record: asyncpg.Record) -> OutboxRow:
        payload = record["payload"]
        assert isinstance(payload, dict)
        if record["event_type"] == POSTING_ROW:
            return cls(record["id"], expand_posting(payload))
        assert payload.get("id") == str(record["event_id"]), "payload id must be the event id"
        return cls(record["id"], [(record["message_key"], payload)])

    def messages(self, wallet_id: str | None = None) -> list[OutboundMessage]:
        """Its messages, in order; only ``wallet_id``'s when given."""
        return [
            OutboundMessage(key.encode(), orjson.dumps(event))
            for key, event in self.events
            if wallet_id is None or key == wallet_id
        ]


def acknowledged_rows(
    messages_per_row: Sequence[int], acknowledged_messages: int
) -> tuple[int, int]:
    """(rows, their messages) wholly inside the first ``acknowledged_messages``."""
    rows = messages = 0
    for count in messages_per_row:
        if messages + count > acknowledged_messages:
            break
        rows, messages = rows + 1, messages + count
    return rows, messages


@dataclass(slots=True)
class Backoff:
    """Bounded exponential backoff with jitter, reset after a success."""

    initial_seconds: float = BACKOFF_INITIAL_SECONDS
    maximum_seconds: float = BACKOFF_MAX_SECONDS
    attempt: int = 0

    def next_delay_seconds(self) -> float:
        delay = min(self.maximum_seconds, self.initial_seconds * 2.0 ** min(self.attempt, 30))
        self.attempt += 1
        return delay * random.uniform(0.5, 1.0)

    def reset(self) -> None:
        self.attempt = 0


def relay_lock_ids() -> tuple[int, int]:
    """The (classid, objid) under which ``pg_locks`` shows the relay's advisory lock."""
    return RELAY_LOCK_KEY >> 32, RELAY_LOCK_KEY & 0xFFFFFFFF


async def relay_leader(connection: asyncpg.Connection) -> tuple[int, str] | None:
    """The backend pid and application name of the relay holding the lock, if any."""
    row = await connection.fetchrow(LEADER_BACKEND, *relay_lock_ids())
    return None if row is None else (row["pid"], row["application_name"])


class LeaderLock:
    """A dedicated connection holding (or trying for) the relay's session advisory lock."""

    def __init__(self, connection: asyncpg.Connection) -> None:
        self.connection = connection

    @classmethod
    async def connect(cls, database_url: str, timeout_seconds: float) -> LeaderLock:
        connection = await asyncpg.connect(
            database_url,
            timeout=timeout_seconds,
            command_timeout=timeout_seconds,
            server_settings={"application_name": f"walletd-relay:{os.getpid()}"},
        )
        try:
            await init_connection(connection)
        except BaseException:
            connection.terminate()
            raise
        return cls(connection)

    async def try_acquire(self) -> bool:
        acquired: bool = await self.connection.fetchval(
            "SELECT pg_try_advisory_lock($1)", RELAY_LOCK_KEY, timeout=LOCK_QUERY_TIMEOUT_SECONDS
        )
        return acquired

    async def alive(self) -> bool:
        """True when the session (hence the lock) still exists: one bounded round trip."""
        if self.connection.is_closed():
            return False
        try:
            await self.connection.fetchval("SELECT 1", timeout=LOCK_QUERY_TIMEOUT_SECONDS)
        except DATABASE_ERRORS:
            return False
        return True

    async def listen(self, on_notify: Callable[[], None]) -> None:
        def callback(_connection: Any, _pid: int, _channel: str, _payload: str) -> None:
            on_notify()

        await self.connection.add_listener(NOTIFY_CHANNEL, callback)

    async def close(self) -> None:
        """Close the session, which releases the lock; never blocks for long."""
        try:
            await self.connection.close(timeout=LOCK_QUERY_TIMEOUT_SECONDS)
        except DATABASE_ERRORS:
            self.connection.terminate()


@dataclass(slots=True)
class Relay:
    """One relay process: standby until it holds the lock, then the publisher."""

    settings: Settings
    database: Database
    stop_event: asyncio.Event
    publisher_factory: Callable[[], EventPublisher]
    _next_retention_at: float = 0.0

    @property
    def stopping(self) -> bool:
        return self.stop_event.is_set()

    async def run(self) -> None:
        """Alternate between standby and leadership until the stop event is set."""
        gauges = asyncio.create_task(self._refresh_gauges())
        try:
            while not self.stopping:
                lock = await self._wait_for_leadership()
                if lock is None:
                    return
                try:
                    await self._lead(lock)
                finally:
                    relay_metrics.RELAY_LEADER.set(0)
                    await lock.close()
                if not self.stopping:
                    logger.warning("relay.leadership_lost")
        finally:
            gauges.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await gauges

    async def _refresh_gauges(self) -> None:
        """Outbox depth and oldest age every second, leader or not, even mid-batch."""
        failing = False
        while not self.stopping:
            try:
                async with self.database.connection() as connection:
                    await relay_metrics.refresh_outbox_gauges(connection)
                failing = False
            except DATABASE_ERRORS as error:
                if not failing:
                    logger.warning("relay.gauges_failed", error=_describe(error))
                failing = True
            await self._pause(GAUGE_REFRESH_SECONDS)

    async def _wait_for_leadership(self) -> LeaderLock | None:
        """Try the lock every second; reconnect (with backoff) when PostgreSQL is away."""
        lock: LeaderLock | None = None
        backoff = Backoff(initial_seconds=LOCK_RETRY_SECONDS)
        while not self.stopping:
            delay = LOCK_RETRY_SECONDS
            try:
                if lock is None:
                    lock = await LeaderLock.connect(
                        self.database.url, self.settings.database_timeout_seconds
                    )
                if await lock.try_acquire():
                    relay_metrics.RELAY_LEADER.set(1)
                    logger.info("relay.leader", pid=os.getpid())
                    return lock
                backoff.reset()
            except DATABASE_ERRORS as error:
                logger.warning("relay.lock_unavailable", error=_describe(error))
                if lock is not None:
                    await lock.close()
                    lock = None
                delay = backoff.next_delay_seconds()
            await self._pause(delay)
        if lock is not None:
            await lock.close()
        return None

    async def _lead(self, lock: LeaderLock) -> None:
        """Publish batches while the lock connection lives and no stop was asked."""
        wake = asyncio.Event()
        try:
            await lock.listen(wake.set)
        except DATABASE_ERRORS as error:
            logger.warning("relay.listen_failed", error=_describe(error))
            return
        publisher = self.publisher_factory()
        backoff = Backoff()
        try:
            while not self.stopping:
                if publisher.fatal_error is not None:
                    logger.error("relay.producer_fatal", error=str(publisher.fatal_error))
                    await asyncio.to_thread(publisher.close)
                    publisher = self.publisher_factory()
                wake.clear()
                published = await self._cycle(publisher, lock, backoff)
                if published is None:
                    if not await lock.alive():
                        return
                    await self._pause(backoff.next_delay_seconds())
                    continue
                backoff.reset()
                await self._apply_retention()
                if published < self.settings.outbox_batch_size:
                    await self._pause(self.settings.outbox_poll_seconds, wake)
                    if published >= LINGER_MIN_ROWS and self.settings.outbox_linger_seconds:
                        await self._pause(self.settings.outbox_linger_seconds)
        finally:
            await asyncio.to_thread(publisher.close)

    async def _cycle(
        self, publisher: EventPublisher, lock: LeaderLock, backoff: Backoff
    ) -> int | None:
        """One batch: how many rows it published, or None when it failed."""
        batch_size = self.settings.outbox_batch_size
        try:
            rows = await fetch_unpublished(lock.connection, batch_size)
            published = await self._publish(publisher, lock, rows) if rows else 0
        except DATABASE_ERRORS as error:
            relay_metrics.PUBLISH_FAILURES.inc()
            logger.warning("relay.batch_failed", error=_describe(error), attempt=backoff.attempt)
            return None
        if published < len(rows):
            relay_metrics.PUBLISH_FAILURES.inc()
            return None
        return published

    async def _publish(
        self, publisher: EventPublisher, lock: LeaderLock, rows: Sequence[OutboxRow]
    ) -> int:
        """Send ``rows``; mark the acknowledged prefix of rows published; return its length.

        A row is acknowledged once every message it expands into is.
        """
        per_row = [row.messages() for row in rows]
        messages = [message for row_messages in per_row for message in row_messages]
        delivery = await asyncio.to_thread(publisher.send, messages)
        timeout = self.settings.kafka_timeout_seconds
        for attempt in range(MAX_WAIT_ATTEMPTS):
            if await self._wait_delivery(publisher, delivery, timeout):
                break
            logger.warning(
                "relay.broker_slow", attempt=attempt + 1, waited_seconds=timeout,
                acknowledged=delivery.acknowledged_prefix(), batch=len(rows),
            )  # fmt: skip
            if self.stopping or not await lock.alive():
                break
        acknowledged, sent = acknowledged_rows(
            [len(row_messages) for row_messages in per_row], delivery.acknowledged_prefix()
        )
        if acknowledged < len(rows):
            error = delivery.first_error()
            logger.warning(
                "relay.batch_incomplete", acknowledged=acknowledged, batch=len(rows),
                first_unacknowledged_id=rows[acknowledged].id,
                error=None if error is None else error.str(),
            )  # fmt: skip
            await asyncio.to_thread(publisher.abandon)
        if acknowledged:
            await mark_published(lock.connection, [row.id for row in rows[:acknowledged]])
            relay_metrics.EVENTS_PUBLISHED.inc(sent)
        return acknowledged

    async def _wait_delivery(
        self, publisher: EventPublisher, delivery: Any, timeout_seconds: float
    ) -> bool:
        """Wait up to ``timeout_seconds`` in slices, stopping early on a stop request."""
        for _slice in range(max(1, math.ceil(timeout_seconds / WAIT_SLICE_SECONDS))):
            slice_seconds = min(WAIT_SLICE_SECONDS, timeout_seconds)
            if await asyncio.to_thread(publisher.wait, delivery, slice_seconds):
                return True
            if self.stopping:
                return False
        return bool(delivery.settled())

    async def _apply_retention(self) -> None:
        """Once a minute, delete published rows past ``outbox_retention_hours``."""
        now = asyncio.get_running_loop().time()
        if now < self._next_retention_at:
            return
        self._next_retention_at = now + RETENTION_INTERVAL_SECONDS
        try:
            await delete_retained(self.database, self.settings.outbox_retention_hours)
        except DATABASE_ERRORS as error:
            logger.warning("relay.retention_failed", error=_describe(error))

    async def _pause(self, seconds: float, wake: asyncio.Event | None = None) -> None:
        """Sleep up to ``seconds``; return early on stop or on ``wake``."""
        events = [self.stop_event] if wake is None else [self.stop_event, wake]
        waiters = [asyncio.create_task(event.wait()) for event in events]
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()


def _describe(error: BaseException) -> str:
    return " ".join(f"{type(error).__name__}: {error}".split())


async def fetch_unpublished(connection: asyncpg.Connection, limit: int) -> list[OutboxRow]:
    """The first ``limit`` unpublished rows in id order."""
    assert 1 <= limit <= 10_000
    records = await connection.fetch(FETCH_UNPUBLISHED, limit)
    rows = [OutboxRow.from_record(record) for record in records]
    assert all(a.id < b.id for a, b in itertools.pairwise(rows))
    return rows


async def mark_published(connection: asyncpg.Connection, ids: Sequence[int]) -> None:
    assert 0 < len(ids) <= 10_000
    await connection.execute(MARK_PUBLISHED, list(ids))


async def delete_retained(database: Database, retention_hours: float) -> int:
    """Delete published rows older than the retention, in bounded batches; the count."""
    deleted_total = 0
    for _batch in range(RETENTION_MAX_BATCHES):
        async with database.connection() as connection:
            status = await connection.execute(
                DELETE_RETAINED, retention_hours * 3600.0, RETENTION_BATCH_SIZE
            )
        deleted = int(status.split()[-1])
        deleted_total += deleted
        if deleted < RETENTION_BATCH_SIZE:
            break
    if deleted_total:
        logger.info("relay.retention", deleted=deleted_total)
    return deleted_total


def relay_database(settings: Settings) -> Database:
    return Database(
        settings.database_url,
        min_size=1,
        max_size=3,
        command_timeout_seconds=settings.database_timeout_seconds,
        acquire_timeout_seconds=settings.database_acquire_timeout_seconds,
    )


async def check_schema(database: Database) -> None:
    """:class:`Unavailable` naming PostgreSQL when the outbox table does not exist yet."""
    async with database.connection() as connection:
        present = await connection.fetchval(SCHEMA_PRESENT)
    if not present:
        raise Unavailable("PostgreSQL has no walletd schema (outbox missing): run walletd migrate")


def kafka_bootstrap(settings: Settings) -> str:
    if not settings.kafka_bootstrap:
        raise BrokerUnavailable("Kafka is not configured: set WALLETD_KAFKA_BOOTSTRAP")
    return settings.kafka_bootstrap


async def run_relay(settings: Settings, stop_event: asyncio.Event) -> None:
    """Check PostgreSQL and the broker, create the topic if missing, relay until stopped.

    Raises :class:`~walletd.errors.Unavailable` (one-line message naming the
    dependency) when PostgreSQL or Kafka cannot be reached at start.
    """
    bootstrap = kafka_bootstrap(settings)
    timeout = settings.kafka_timeout_seconds
    database = relay_database(settings)
    await database.connect(connect_timeout_seconds=settings.database_timeout_seconds)
    try:
        await check_schema(database)
        await asyncio.to_thread(
            ensure_topic, bootstrap, settings.kafka_topic, timeout_seconds=timeout
        )
        logger.info("relay.started", topic=settings.kafka_topic, pid=os.getpid())
        relay = Relay(
            settings,
            database,
            stop_event,
            lambda: EventPublisher(bootstrap, settings.kafka_topic, timeout_seconds=timeout),
        )
        await relay.run()
    finally:
        await database.close()
        logger.info("relay.stopped", pid=os.getpid())


# ------------------------------------------------------------------------------ replay


@dataclass(frozen=True, slots=True)
class ReplayFilter:
    """Which stored events to republish: ``start <= created_at < end``, one wallet or all."""

    start: datetime
    end: datetime | None = None
    wallet_id: UUID | None = None

    def __post_init__(self) -> None:
        assert self.start.tzinfo is not None, "replay times must carry a time zone"
        assert self.end is None or self.end.tzinfo is not None

    def arguments(self) -> tuple[datetime, datetime | None, str | None]:
        return self.start, self.end, None if self.wallet_id is None else str(self.wallet_id)


# A wallet's rows: its own events, and posted transactions with one of its entries.
_REPLAY_ROWS = f"""
FROM outbox
WHERE created_at >= $1 AND ($2::timestamptz IS NULL OR created_at < $2)
  AND ($3::text IS NULL OR message_key = $3
       OR (event_type = '{POSTING_ROW}'
           AND jsonb_path_exists(payload, '$.entries[*][1] ? (@ == $w)',
                                 jsonb_build_object('w', $3))))
"""
COUNT_REPLAY = f"SELECT count(*) {_REPLAY_ROWS}"
FETCH_REPLAY = f"""
SELECT id, event_id, message_key, event_type, payload {_REPLAY_ROWS} AND id > $4
ORDER BY id
LIMIT $5
"""


async def count_replay_events(database: Database, replay_filter: ReplayFilter) -> int:
    """How many stored rows the filter selects (a posted transaction's row is one)."""
    async with database.connection() as connection:
        count: int = await connection.fetchval(COUNT_REPLAY, *replay_filter.arguments())
    return count


async def replay_events(
    database: Database,
    publisher: EventPublisher,
    replay_filter: ReplayFilter,
    *,
    batch_size: int = 500,
    max_events: int | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> int:
    """Republish stored events (same ids and payloads) in id order; the number sent.

    ``max_events`` and ``on_progress`` count stored rows. ``published_at`` is left
    alone. :class:`BrokerUnavailable` when a batch is not acknowledged within the
    bounded waits (what was acknowledged stays published).
    """
    assert 1 <= batch_size <= 10_000
    limit = (
        max_events if max_events is not None else await count_replay_events(database, replay_filter)
    )
    after_id, done, sent = 0, 0, 0
    for _batch in range(math.ceil(limit / batch_size) + 1):
        async with database.connection() as connection:
            records = await connection.fetch(
                FETCH_REPLAY, *replay_filter.arguments(), after_id, batch_size
            )
        if not records or done >= limit:
            break
        rows = [OutboxRow.from_record(record) for record in records[: limit - done]]
        wallet = replay_filter.arguments()[2]
        messages = [message for row in rows for message in row.messages(wallet)]
        await _replay_batch(publisher, rows, messages)
        after_id, done, sent = rows[-1].id, done + len(rows), sent + len(messages)
        if on_progress is not None:
            on_progress(len(rows))
    return sent


async def _replay_batch(
    publisher: EventPublisher, rows: Sequence[OutboxRow], messages: Sequence[OutboundMessage]
) -> None:
    delivery = await asyncio.to_thread(publisher.send, list(messages))
    timeout = publisher.timeout_seconds * MAX_WAIT_ATTEMPTS
    settled = await asyncio.to_thread(publisher.wait, delivery, timeout)
    acknowledged = delivery.acknowledged_prefix()
    if not settled or acknowledged < len(messages):
        await asyncio.to_thread(publisher.abandon)
        error = delivery.first_error()
        reason = "no acknowledgement in time" if error is None else error.str()
        per_row = [len(row.messages()) for row in rows]
        first_row, _ = acknowledged_rows(per_row, acknowledged)
        raise BrokerUnavailable(
            f"Kafka broker at {publisher.bootstrap} did not take event outbox id "
            f"{rows[min(first_row, len(rows) - 1)].id}: {reason}"
        )


async def run_replay(
    settings: Settings,
    replay_filter: ReplayFilter,
    *,
    on_total: Callable[[int], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> int:
    """Connect, check the broker and the topic, count, then replay; the number sent."""
    bootstrap = kafka_bootstrap(settings)
    timeout = settings.kafka_timeout_seconds
    database = relay_database(settings)
    await database.connect(connect_timeout_seconds=settings.database_timeout_seconds)
    try:
        await check_schema(database)
        await asyncio.to_thread(
            ensure_topic, bootstrap, settings.kafka_topic, timeout_seconds=timeout
        )
        total = await count_replay_events(database, replay_filter)
        if on_total is not None:
            on_total(total)
        publisher = EventPublisher(bootstrap, settings.kafka_topic, timeout_seconds=timeout)
        try:
            return await replay_events(
                database, publisher, replay_filter,
                batch_size=settings.outbox_batch_size, max_events=total, on_progress=on_progress,
            )  # fmt: skip
        finally:
            await asyncio.to_thread(publisher.close)
    finally:
        await database.close()

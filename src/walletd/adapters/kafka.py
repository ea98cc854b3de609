"""Kafka adapters for the outbox relay: an idempotent producer and topic administration.

Every call into librdkafka here is bounded by a timeout, and every failure to reach
the broker becomes :class:`BrokerUnavailable` (a 503-style
:class:`~walletd.errors.Unavailable`) with a one-line message naming the broker.

The producer is idempotent (``enable.idempotence``, ``acks=all``) and never gives up
on a message by itself (``message.timeout.ms=0``): a message that expired in the local
queue while the broker was away could leave a hole before a later message of the same
key. The relay bounds its own waiting instead and purges what it abandons.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from confluent_kafka import KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from walletd.errors import Unavailable

logger = structlog.get_logger("walletd.kafka")

DEFAULT_PARTITIONS = 3
DEFAULT_REPLICATION = 1
# One flush waits this long at most, so that a stop request is seen quickly.
FLUSH_SLICE_SECONDS = 0.25
# produce() raises BufferError when librdkafka's local queue is full; poll and retry.
MAX_BUFFER_RETRIES = 50
# The same broker error is logged at most once per this many seconds.
ERROR_LOG_INTERVAL_SECONDS = 10.0


class BrokerUnavailable(Unavailable):
    """The Kafka broker did not answer in time or refused a request."""


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def admin_client(bootstrap: str, timeout_seconds: float) -> AdminClient:
    return AdminClient(
        {
            "bootstrap.servers": bootstrap,
            "socket.timeout.ms": int(timeout_seconds * 1000),
            "log_level": 0,
        }
    )


def topic_names(bootstrap: str, timeout_seconds: float) -> set[str]:
    """The broker's topics; :class:`BrokerUnavailable` when it does not answer in time."""
    try:
        metadata = admin_client(bootstrap, timeout_seconds).list_topics(timeout=timeout_seconds)
    except KafkaException as error:
        raise BrokerUnavailable(
            f"Kafka broker is unreachable at {bootstrap}: {_one_line(error.args[0])}"
        ) from error
    return set(metadata.topics)


def ensure_topic(
    bootstrap: str,
    topic: str,
    *,
    timeout_seconds: float,
    partitions: int = DEFAULT_PARTITIONS,
    replication: int = DEFAULT_REPLICATION,
) -> bool:
    """Create ``topic`` when missing (True); an existing topic is used as it is (False)."""
    assert partitions >= 1
    assert replication >= 1
    if topic in topic_names(bootstrap, timeout_seconds):
        return False
    admin = admin_client(bootstrap, timeout_seconds)
    futures = admin.create_topics(
        [NewTopic(topic, num_partitions=partitions, replication_factor=replication)],
        request_timeout=timeout_seconds,
        operation_timeout=timeout_seconds,
    )
    try:
        futures[topic].result(timeout=timeout_seconds)
    except KafkaException as error:
        kafka_error: KafkaError = error.args[0]
        if kafka_error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
            return False  # another relay created it first
        raise BrokerUnavailable(
            f"Kafka broker at {bootstrap} could not create topic {topic}: {_one_line(kafka_error)}"
        ) from error
    except TimeoutError as error:
        raise BrokerUnavailable(
            f"Kafka broker at {bootstrap} did not create topic {topic} in time"
        ) from error
    logger.info("kafka.topic_created", topic=topic, partitions=partitions)
    return True


@dataclass(frozen=True, slots=True)
class OutboundMessage:
    """One record to publish: the key (a wallet id) and the compact JSON value."""

    key: bytes
    value: bytes


# Delivery errors that mean the producer's idempotence state (id, epoch, sequence) is
# stale: resending through the same producer fails forever, a new producer succeeds.
PRODUCER_STATE_ERRORS = frozenset(
    {
        KafkaError._FENCED,
        KafkaError.PRODUCER_FENCED,
        KafkaError.INVALID_PRODUCER_EPOCH,
        KafkaError.UNKNOWN_PRODUCER_ID,
        KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER,
        KafkaError.INVALID_PRODUCER_ID_MAPPING,
    }
)


class BatchDelivery:
    """Delivery reports of one batch, slot ``i`` for message ``i``: None while pending."""

    def __init__(self, size: int, on_error: Any = None) -> None:
        assert size > 0
        self.results: list[KafkaError | bool | None] = [None] * size
        self._on_error = on_error

    def callback(self, index: int) -> Any:
        def on_delivery(error: KafkaError | None, _message: Message) -> None:
            self.results[index] = True if error is None else error
            if error is not None and self._on_error is not None:
                self._on_error(error)

        return on_delivery

    def acknowledged_prefix(self) -> int:
        """How many messages, from the first, the broker acknowledged without a gap."""
        count = 0
        for result in self.results:
            if result is not True:
                break
            count += 1
        return count

    def first_error(self) -> KafkaError | None:
        """The error of the first unacknowledged message when it failed (not pending)."""
        prefix = self.acknowledged_prefix()
        if prefix == len(self.results):
            return None
        result = self.results[prefix]
        return result if isinstance(result, KafkaError) else None

    def settled(self) -> bool:
        """True when nothing more can be learnt: all acknowledged, or the first gap failed."""
        return self.acknowledged_prefix() == len(self.results) or self.first_error() is not None


class EventPublisher:
    """An idempotent producer for one topic; its blocking calls are bounded by timeouts.

    Not thread-safe: one task drives it, calling the blocking methods through
    ``asyncio.to_thread`` one at a time.
    """

    def __init__(self, bootstrap: str, topic: str, *, timeout_seconds: float) -> None:
        self.bootstrap, self.topic = bootstrap, topic
        self.timeout_seconds = timeout_seconds
        self._fatal: KafkaError | None = None
        self._last_logged: dict[int, float] = {}
        self._lock = threading.Lock()
        self._producer = Producer(self._config())

    def _config(self) -> dict[str, Any]:
        timeout_ms = int(self.timeout_seconds * 1000)
        return {
            "bootstrap.servers": self.bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "max.in.flight.requests.per.connection": 5,
            "linger.ms": 2,
            "message.timeout.ms": 0,  # never expire locally: see the module docstring
            "request.timeout.ms": max(timeout_ms, 1000),
            "socket.timeout.ms": max(timeout_ms, 1000),
            "reconnect.backoff.max.ms": 1000,
            "retry.backoff.max.ms": 1000,
            "compression.type": "lz4",
            "log_level": 0,
            "error_cb": self._on_error,
        }

    def _on_error(self, error: KafkaError) -> None:
        if error.fatal():
            self._fatal = error
        now = time.monotonic()
        with self._lock:
            last = self._last_logged.get(error.code(), -ERROR_LOG_INTERVAL_SECONDS)
            if now - last < ERROR_LOG_INTERVAL_SECONDS and not error.fatal():
                return
            self._last_logged[error.code()] = now
        logger.warning(
            "kafka.error", bootstrap=self.bootstrap, code=error.name(), fatal=error.fatal(),
            detail=_one_line(error.str()),
        )  # fmt: skip

    def _on_delivery_error(self, error: KafkaError) -> None:
        """A stale producer state is as good as fatal: the relay replaces this producer."""
        if error.code() in PRODUCER_STATE_ERRORS and self._fatal is None:
            self._fatal = error

    @property
    def fatal_error(self) -> KafkaError | None:
        """A fatal producer error: this publisher must be closed and replaced."""
        return self._fatal

    def send(self, messages: Sequence[OutboundMessage]) -> BatchDelivery:
        """Hand ``messages`` to the producer in order; reports arrive during :meth:`flush`."""
        delivery = BatchDelivery(len(messages), on_error=self._on_delivery_error)
        try:
            for index, message in enumerate(messages):
                self._produce(message, delivery.callback(index))
        except BrokerUnavailable:
            self.abandon()  # the batch will be sent again whole: drop its first part
            raise
        return delivery

    def _produce(self, message: OutboundMessage, on_delivery: Any) -> None:
        for _attempt in range(MAX_BUFFER_RETRIES):
            try:
                self._producer.produce(
                    self.topic, key=message.key, value=message.value, on_delivery=on_delivery
                )
                return
            except BufferError:
                self._producer.poll(0.1)
            except KafkaException as error:
                raise BrokerUnavailable(
                    f"Kafka producer refused a message for {self.topic}: {_one_line(error.args[0])}"
                ) from error
        raise BrokerUnavailable(f"Kafka producer queue stays full (broker {self.bootstrap})")

    def flush(self, timeout_seconds: float) -> int:
        """Serve delivery reports for up to ``timeout_seconds``; the count still pending."""
        remaining: int = self._producer.flush(max(0.0, timeout_seconds))
        return remaining

    def wait(self, delivery: BatchDelivery, timeout_seconds: float) -> bool:
        """Flush in short slices until ``delivery`` is settled or the time is up."""
        deadline = time.monotonic() + timeout_seconds
        slices = int(timeout_seconds / FLUSH_SLICE_SECONDS) + 1
        for _slice in range(slices):
            if delivery.settled():
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self.flush(min(FLUSH_SLICE_SECONDS, left))
        return delivery.settled()

    def abandon(self) -> None:
        """Drop every message still queued or in flight (they may or may not arrive)."""
        self._producer.purge(in_queue=True, in_flight=True, blocking=True)
        self._producer.poll(0)

    def close(self) -> None:
        """Abandon what is pending and release the producer (bounded by the timeout)."""
        self.abandon()
        if self._producer.flush(min(1.0, self.timeout_seconds)) == 0:
            self._producer.close()  # close() flushes without a timeout: only when empty

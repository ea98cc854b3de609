"""The verdicts of a chaos run, read from PostgreSQL, the API, ``walletd audit`` and Kafka.

1. conservation: the tenant's balances sum to 0 (system wallet included), the user
   wallets hold exactly what was credited, and each wallet holds exactly what the
   acknowledged operations imply;
2. exactly once: each acknowledged key posted one transaction with the acknowledged
   id, nothing else posted, refusals posted nothing, and replays answer the same;
3. ``walletd audit --json`` exits 0;
4. every outbox event of the tenant, hence every entry, is in Kafka (duplicates
   allowed), and per wallet the first arrivals come in ``wallet_version`` order;
5. after every fault the API answered 200 again within the bound;
6. coverage: at least the minimum number of faults, every kind at least once.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from tests.chaos.faults import FAULT_KINDS, FaultRecord
from tests.chaos.processes import run_cli
from tests.chaos.workload import (
    ACKNOWLEDGED,
    REFUSED,
    UNRESOLVED,
    Operation,
    RetryPolicy,
    send_until_definitive,
)
from walletd.domain.events import POSTING_ROW, expand_posting

LISTED = 20  # examples named per failed verdict
ENTRY_EVENT_TYPES = frozenset({"wallet.credited", "wallet.debited"})
KAFKA_POLL_SECONDS = 0.5
KAFKA_BATCH = 1000
READ_ATTEMPTS = 3


@dataclass
class Verdict:
    """One check: whether it holds, a one-line reason, and the numbers behind it."""

    name: str
    ok: bool
    detail: str
    data: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "detail": self.detail, **self.data}


@dataclass
class Snapshot:
    """What the database holds for the run's tenant once everything has settled."""

    balances: dict[str, int]  # user wallet id -> balance
    system_balance: int
    transfers: dict[str, tuple[str, str, int, str]]  # id -> (from, to, amount, status)
    credits: dict[str, int]  # id -> amount
    keys: dict[str, tuple[int, dict[str, Any]]]  # idempotency key -> (status, body)
    entries: set[tuple[str, str, int]]  # (transaction id, wallet id, wallet_version)
    outbox_event_ids: set[str]


def _published_ids(row: asyncpg.Record) -> list[str]:
    """The ids of the events an outbox row publishes (a posting row: one per entry)."""
    if row["event_type"] == POSTING_ROW:
        return [event["id"] for _, event in expand_posting(orjson.loads(row["payload"]))]
    return [str(row["event_id"])]


async def read_snapshot(database_url: str, tenant_id: str) -> Snapshot:
    """Read the tenant's wallets, transactions, keys, entries and outbox ids."""
    tenant = uuid.UUID(tenant_id)
    connection = await asyncpg.connect(database_url, timeout=10)
    try:
        wallets = await connection.fetch(
            "SELECT id, is_system, balance FROM wallets WHERE tenant_id = $1", tenant
        )
        transactions = await connection.fetch(
            "SELECT id, type, from_wallet_id, to_wallet_id, amount, status"
            " FROM transactions WHERE tenant_id = $1",
            tenant,
        )
        keys = await connection.fetch(
            "SELECT key, status_code, response_body FROM idempotency_keys WHERE tenant_id = $1",
            tenant,
        )
        entries = await connection.fetch(
            "SELECT e.transaction_id, e.wallet_id, e.wallet_version FROM entries e"
            " JOIN transactions t ON t.id = e.transaction_id WHERE t.tenant_id = $1",
            tenant,
        )
        outbox = await connection.fetch(
            "SELECT event_id, event_type, payload::text AS payload FROM outbox"
            " WHERE tenant_id = $1",
            tenant,
        )
    finally:
        await connection.close()
    return Snapshot(
        balances={str(r["id"]): r["balance"] for r in wallets if not r["is_system"]},
        system_balance=sum(r["balance"] for r in wallets if r["is_system"]),
        transfers={
            str(r["id"]): (
                str(r["from_wallet_id"]),
                str(r["to_wallet_id"]),
                r["amount"],
                r["status"],
            )
            for r in transactions
            if r["type"] == "transfer"
        },
        credits={str(r["id"]): r["amount"] for r in transactions if r["type"] == "credit"},
        keys={r["key"]: (r["status_code"], _body(r["response_body"])) for r in keys},
        entries={(str(r[0]), str(r[1]), int(r[2])) for r in entries},
        outbox_event_ids={event_id for row in outbox for event_id in _published_ids(row)},
    )


def _body(raw: bytes) -> dict[str, Any]:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


async def unpublished_count(database_url: str) -> int:
    connection = await asyncpg.connect(database_url, timeout=10)
    try:
        count: int = await connection.fetchval(
            "SELECT count(*) FROM outbox WHERE published_at IS NULL"
        )
    finally:
        await connection.close()
    return count


async def wait_drained(database_url: str, timeout_seconds: float) -> tuple[bool, float, int]:
    """Wait until the outbox has no unpublished row: (drained, seconds waited, rows left)."""
    started = time.monotonic()
    left = -1
    while time.monotonic() - started < timeout_seconds:
        try:
            left = await unpublished_count(database_url)
        except (OSError, asyncpg.PostgresError, TimeoutError):
            left = -1
        if left == 0:
            return True, time.monotonic() - started, 0
        await asyncio.sleep(0.25)
    return False, time.monotonic() - started, left


def resolve(operations: Sequence[Operation], snapshot: Snapshot) -> dict[str, str | None]:
    """Per unresolved operation: the transaction its stored key proves it posted, or None."""
    fates: dict[str, str | None] = {}
    for operation in operations:
        if operation.outcome != UNRESOLVED:
            continue
        stored = snapshot.keys.get(operation.key)
        if stored is not None and 200 <= stored[0] < 300:
            fates[operation.key] = str(stored[1].get("id"))
        else:
            fates[operation.key] = None
    return fates


def posted_transfers(
    transfers: Sequence[Operation], fates: Mapping[str, str | None]
) -> dict[str, Operation]:
    """Transaction id -> operation, for every transfer the client knows or the DB proves posted."""
    posted: dict[str, Operation] = {}
    for operation in transfers:
        if operation.outcome == ACKNOWLEDGED and operation.object_id is not None:
            posted[operation.object_id] = operation
        elif (transaction_id := fates.get(operation.key)) is not None:
            posted[transaction_id] = operation
    return posted


def check_conservation(
    snapshot: Snapshot, credited_total: int, expected: Mapping[str, int]
) -> Verdict:
    """Sum 0 with the system wallet; user wallets = credits; each wallet = its operations."""
    user_total = sum(snapshot.balances.values())
    tenant_total = user_total + snapshot.system_balance
    wrong = {
        wallet: {"expected": amount, "balance": snapshot.balances.get(wallet)}
        for wallet, amount in expected.items()
        if snapshot.balances.get(wallet) != amount
    }
    ok = tenant_total == 0 and user_total == credited_total and not wrong
    data = {
        "tenant_sum": tenant_total,
        "user_wallets_sum": user_total,
        "credited_total": credited_total,
        "system_balance": snapshot.system_balance,
        "wallets_off": dict(list(wrong.items())[:LISTED]),
    }
    detail = (
        f"tenant sum {tenant_total}, user wallets {user_total} = credited {credited_total},"
        f" {len(expected) - len(wrong)}/{len(expected)} wallets as the operations imply"
    )
    return Verdict("conservation", ok, detail, data)


def expected_balances(
    funding: Sequence[Operation], posted: Mapping[str, Operation]
) -> dict[str, int]:
    """Each user wallet's balance implied by its funding and the posted transfers."""
    balances: Counter[str] = Counter()
    for credit in funding:
        balances[str(credit.body["wallet_id"])] += int(credit.body["amount"])
    for operation in posted.values():
        balances[str(operation.body["from_wallet_id"])] -= int(operation.body["amount"])
        balances[str(operation.body["to_wallet_id"])] += int(operation.body["amount"])
    return dict(balances)


def _mismatched_transfers(
    snapshot: Snapshot, posted: Mapping[str, Operation]
) -> list[dict[str, Any]]:
    """Posted transfers whose row is missing or differs from the request body."""
    problems = []
    for transaction_id, operation in posted.items():
        row = snapshot.transfers.get(transaction_id)
        body = operation.body
        wanted = (body["from_wallet_id"], body["to_wallet_id"], body["amount"], "posted")
        if row != wanted:
            problems.append({"key": operation.key, "transaction_id": transaction_id, "row": row})
    return problems


def _key_disagreements(snapshot: Snapshot, operations: Sequence[Operation]) -> list[dict[str, Any]]:
    """Definitive answers that differ from the answer stored under their key."""
    problems = []
    for operation in operations:
        if operation.outcome == UNRESOLVED:
            continue
        stored = snapshot.keys.get(operation.key)
        stored_status = None if stored is None else stored[0]
        stored_id = None if stored is None else stored[1].get("id")
        if operation.outcome == ACKNOWLEDGED:
            agrees = stored_status == operation.status and stored_id == operation.object_id
        else:  # a refusal need not be stored (e.g. 400), but a stored one must match
            agrees = stored is None or stored_status == operation.status
        if not agrees:
            problems.append(
                {"key": operation.key, "answer": [operation.status, operation.object_id],
                 "stored": [stored_status, stored_id]}
            )  # fmt: skip
    return problems


def check_exactly_once(
    transfers: Sequence[Operation],
    fates: Mapping[str, str | None],
    snapshot: Snapshot,
    replay_problems: Sequence[dict[str, Any]],
    replays_checked: int,
) -> Verdict:
    """Acknowledged = posted once with the acknowledged id; nothing posted without a key."""
    posted = posted_transfers(transfers, fates)
    acknowledged = sum(1 for op in transfers if op.outcome == ACKNOWLEDGED)
    unexplained = sorted(set(snapshot.transfers) - set(posted))
    mismatched = _mismatched_transfers(snapshot, posted)
    disagreements = _key_disagreements(snapshot, transfers)
    reused = [op.key for op in transfers if op.code == "idempotency_key_reused"]
    ok = not (unexplained or mismatched or disagreements or reused or replay_problems)
    ok = ok and len(snapshot.transfers) == len(posted)
    data = {
        "db_transfers": len(snapshot.transfers),
        "acknowledged": acknowledged,
        "unresolved_posted": sum(1 for fate in fates.values() if fate is not None),
        "unresolved_not_posted": sum(1 for fate in fates.values() if fate is None),
        "posted_without_acknowledgement": unexplained[:LISTED],
        "rows_not_matching_request": mismatched[:LISTED],
        "answers_not_matching_stored_key": disagreements[:LISTED],
        "idempotency_key_reused": reused[:LISTED],
        "replays_checked": replays_checked,
        "replay_problems": list(replay_problems)[:LISTED],
    }
    detail = (
        f"{len(snapshot.transfers)} transfers in the database for {acknowledged} acknowledged"
        f" + {data['unresolved_posted']} unresolved-but-posted; {len(unexplained)} unexplained,"
        f" {len(mismatched)} mismatched, {len(disagreements)} key disagreements,"
        f" {len(replay_problems)}/{replays_checked} replay problems"
    )
    return Verdict("exactly_once", ok, detail, data)


async def replay_sample(
    http: httpx.AsyncClient,
    operations: Sequence[Operation],
    limit: int,
    policy: RetryPolicy,
    rng: random.Random,
) -> tuple[int, list[dict[str, Any]]]:
    """Resend up to ``limit`` definitive operations with their key: the same answer, replayed."""
    definitive = [op for op in operations if op.outcome in (ACKNOWLEDGED, REFUSED)]
    sample = rng.sample(definitive, min(limit, len(definitive)))
    gate = asyncio.Semaphore(8)

    async def one(original: Operation) -> dict[str, Any] | None:
        again = Operation(original.kind, original.path, original.body, key=original.key)
        async with gate:
            await send_until_definitive(http, again, policy, rng)
        same = (again.status, again.object_id, again.code) == (
            original.status, original.object_id, original.code
        )  # fmt: skip
        stored = original.code not in ("idempotency_key_required", "invalid_request")
        if same and (again.replayed or not stored):
            return None
        return {"key": original.key, "first": [original.status, original.object_id, original.code],
                "replay": [again.status, again.object_id, again.code, again.replayed]}  # fmt: skip

    results = await asyncio.gather(*(one(op) for op in sample))
    return len(sample), [problem for problem in results if problem is not None]


def check_audit(env: Mapping[str, str]) -> Verdict:
    """``walletd audit --json`` must exit 0."""
    done = run_cli(["audit", "--json", "--no-progress"], env, timeout_seconds=600)
    try:
        report = json.loads(done.stdout.strip().splitlines()[-1]) if done.stdout.strip() else {}
    except json.JSONDecodeError:
        report = {"unparsed_stdout": done.stdout[-2000:]}
    data = {"exit_code": done.returncode, "report": report, "stderr": done.stderr[-2000:]}
    checked = report.get("checked", {}) if isinstance(report, dict) else {}
    detail = f"exit code {done.returncode}; checked {checked}"
    return Verdict("audit", done.returncode == 0, detail, data)


@dataclass
class TopicRead:
    """The tenant's events as read from the topic: first arrivals and duplicate count."""

    messages: int = 0
    duplicates: int = 0
    wanted_found: int = 0  # distinct event ids read that the caller asked for
    event_ids: set[str] = field(default_factory=set)
    entry_keys: set[tuple[str, str, int]] = field(default_factory=set)
    # wallet id -> wallet_version of its entry events' first arrivals, in partition order
    versions: dict[str, list[int]] = field(default_factory=dict)
    partitions_of: dict[str, set[int]] = field(default_factory=dict)
    seconds: float = 0.0


def _partitions(bootstrap: str, topic: str, timeout_seconds: float) -> list[int]:
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        metadata = admin.list_topics(timeout=5)
        if topic in metadata.topics and metadata.topics[topic].partitions:
            return sorted(metadata.topics[topic].partitions)
        time.sleep(0.2)
    return []


def _take(read: TopicRead, message: Any, tenant_id: str, wanted: set[str]) -> None:
    """Fold one record into ``read`` if it is the tenant's."""
    event = orjson.loads(message.value())
    data = event.get("data") or {}
    if data.get("tenant_id") != tenant_id:
        return
    read.messages += 1
    event_id = str(event["id"])
    if event_id in read.event_ids:
        read.duplicates += 1
        return
    read.event_ids.add(event_id)
    read.wanted_found += event_id in wanted
    if event.get("type") in ENTRY_EVENT_TYPES:
        wallet = str(data["wallet_id"])
        read.entry_keys.add((str(data["transaction_id"]), wallet, int(data["wallet_version"])))
        read.versions.setdefault(wallet, []).append(int(data["wallet_version"]))
        read.partitions_of.setdefault(wallet, set()).add(message.partition())


def read_topic(
    bootstrap: str, topic: str, tenant_id: str, wanted: set[str], deadline_seconds: float
) -> TopicRead:
    """Read the whole topic with assign() from the beginning until every wanted id is seen.

    Partitions are read one after another, so the first arrivals of one wallet (one key,
    one partition) are in offset order. A read that misses some ids is repeated from
    the beginning while the deadline allows (at most ``READ_ATTEMPTS`` reads).
    """
    started = time.monotonic()
    deadline = started + deadline_seconds
    read = TopicRead()
    for _attempt in range(READ_ATTEMPTS):
        read = _read_once(bootstrap, topic, tenant_id, wanted, deadline)
        if read.wanted_found >= len(wanted) or time.monotonic() >= deadline:
            break
        time.sleep(1.0)
    read.seconds = time.monotonic() - started
    return read


def _read_once(
    bootstrap: str, topic: str, tenant_id: str, wanted: set[str], deadline: float
) -> TopicRead:
    read = TopicRead()
    partitions = _partitions(bootstrap, topic, 15.0)
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"chaos-check-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "log_level": 0,
        }
    )
    try:
        for partition in partitions:
            consumer.assign([TopicPartition(topic, partition, OFFSET_BEGINNING)])
            _drain_partition(consumer, read, tenant_id, wanted, deadline)
    finally:
        consumer.close()
    return read


def _drain_partition(
    consumer: Consumer, read: TopicRead, tenant_id: str, wanted: set[str], deadline: float
) -> None:
    """Consume the assigned partition until two polls in a row bring nothing, or the deadline.

    The broker's high watermarks are not trusted (tansu), so "nothing more for a while"
    ends a partition; the caller repeats the read when ids are still missing.
    """
    empty_polls = 0
    while time.monotonic() < deadline and empty_polls < 4:
        messages = consumer.consume(KAFKA_BATCH, KAFKA_POLL_SECONDS)
        good = [message for message in messages if message.error() is None]
        empty_polls = 0 if good else empty_polls + 1
        for message in good:
            _take(read, message, tenant_id, wanted)
        if read.wanted_found >= len(wanted):
            empty_polls = max(empty_polls, 2)  # all found: finish this partition quickly


def _order_problems(read: TopicRead) -> list[dict[str, Any]]:
    """Wallets whose first arrivals are not 1, 2, ..., n, or that span partitions."""
    problems = []
    for wallet, versions in read.versions.items():
        if versions != list(range(1, len(versions) + 1)) or len(read.partitions_of[wallet]) > 1:
            problems.append(
                {"wallet_id": wallet, "first_versions": versions[:50],
                 "partitions": sorted(read.partitions_of[wallet])}
            )  # fmt: skip
    return problems


def check_events(snapshot: Snapshot, read: TopicRead, drained: bool) -> Verdict:
    """Every outbox event and every entry of the tenant in Kafka; per-wallet order."""
    missing_events = sorted(snapshot.outbox_event_ids - read.event_ids)
    missing_entries = sorted(snapshot.entries - read.entry_keys)
    order = _order_problems(read)
    ok = drained and not missing_events and not missing_entries and not order
    data = {
        "outbox_drained": drained,
        "outbox_events": len(snapshot.outbox_event_ids),
        "entries": len(snapshot.entries),
        "messages_read": read.messages,
        "distinct_events": len(read.event_ids),
        "duplicates": read.duplicates,
        "read_seconds": round(read.seconds, 3),
        "missing_events": missing_events[:LISTED],
        "missing_entries": [list(entry) for entry in missing_entries[:LISTED]],
        "order_problems": order[:LISTED],
    }
    detail = (
        f"{len(read.event_ids)} distinct events ({read.duplicates} duplicates) for"
        f" {len(snapshot.outbox_event_ids)} outbox rows and {len(snapshot.entries)} entries;"
        f" {len(missing_events)} events and {len(missing_entries)} entries missing,"
        f" {len(order)} wallets out of order"
    )
    return Verdict("events", ok, detail, data)


def check_recovery(records: Sequence[FaultRecord], bound_seconds: float) -> Verdict:
    """After each fault, 200 from /readyz and a wallet GET within ``bound_seconds``."""
    slow = [
        record.as_json()
        for record in records
        if record.recovery_seconds is None or record.recovery_seconds > bound_seconds
    ]
    times = [r.recovery_seconds for r in records if r.recovery_seconds is not None]
    worst = max(times, default=0.0)
    detail = f"{len(records) - len(slow)}/{len(records)} faults recovered within {bound_seconds} s"
    detail += f" (worst {worst:.2f} s)"
    return Verdict("recovery", not slow, detail, {"bound_seconds": bound_seconds, "slow": slow})


def check_coverage(records: Sequence[FaultRecord], min_faults: int) -> Verdict:
    """At least ``min_faults`` faults and every kind at least once."""
    kinds = Counter(record.kind for record in records)
    absent = [kind for kind in FAULT_KINDS if kinds[kind] == 0]
    ok = len(records) >= min_faults and not absent
    detail = (
        f"{len(records)} faults (minimum {min_faults}); kinds never injected: {absent or 'none'}"
    )
    return Verdict("coverage", ok, detail, {"by_kind": dict(kinds)})

"""Group commit: many requests, one transaction, each with its own exact answer."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import pytest

from walletd.adapters.postgres import Database
from walletd.domain.book import ItemFailure
from walletd.domain.commands import Credit, Transfer
from walletd.domain.records import Transaction
from walletd.service_layer.engine import Engine, GroupOutcome, Request
from walletd.service_layer.group_commit import GROUP_SIZE, GroupCommitter
from walletd.service_layer.idempotency import DuplicateKey, IdempotentRequest
from walletd.service_layer.tenants import create_api_key

pytestmark = pytest.mark.integration


async def _wallets(database: Database, count: int) -> tuple[uuid.UUID, list[uuid.UUID]]:
    async with database.connection() as connection:
        key = await create_api_key(connection, f"group-{uuid.uuid4().hex[:8]}", ["read"])
        ids = [uuid.uuid4() for _ in range(count)]
        now = datetime.now(UTC)
        for wallet_id in ids:
            await connection.execute(
                "INSERT INTO wallets (id, tenant_id, currency, created_at, updated_at)"
                " VALUES ($1, $2, 'EUR', $3, $3)",
                wallet_id,
                key.tenant_id,
                now,
            )
    return key.tenant_id, ids


def _groups_observed() -> float:
    return sum(
        sample.value
        for metric in GROUP_SIZE.collect()
        for sample in metric.samples
        if sample.name.endswith("_count")
    )


def committer_of(engine: Engine) -> GroupCommitter[Request, GroupOutcome]:
    return GroupCommitter(
        engine.post_group, size=lambda r: len(r.commands), max_commands=64, max_in_flight=1
    )


async def test_concurrent_requests_share_transactions_and_keep_their_answers(
    database: Database,
) -> None:
    tenant_id, (hot, *others) = await _wallets(database, 9)
    engine = Engine(database)
    engine.start_group_commit(max_commands=64, max_in_flight=1)
    await engine.post(tenant_id, [Credit(hot, 100, "EUR")])
    groups_before = _groups_observed()
    transfers = [Transfer(hot, others[i % 8], 10, "EUR") for i in range(12)]
    results = await asyncio.gather(*(engine.post(tenant_id, [t]) for t in transfers))
    groups = _groups_observed() - groups_before
    posted = [r[0] for r in results if isinstance(r[0], Transaction)]
    refused = [r[0] for r in results if isinstance(r[0], ItemFailure)]
    assert len(posted) == 10
    assert len(refused) == 2
    assert {failure.error.code for failure in refused} == {"insufficient_funds"}
    assert groups < 12, "requests were not gathered into shared transactions"
    async with database.connection() as connection:
        assert await connection.fetchval("SELECT balance FROM wallets WHERE id = $1", hot) == 0
        versions = await connection.fetch(
            "SELECT wallet_version FROM entries WHERE wallet_id = $1 ORDER BY wallet_version", hot
        )
    assert [row["wallet_version"] for row in versions] == list(range(1, 12))


async def test_a_duplicate_key_in_a_group_fails_alone(database: Database) -> None:
    tenant_id, (source, target) = await _wallets(database, 2)
    engine = Engine(database)
    await engine.post(tenant_id, [Credit(source, 100, "EUR")])
    key = IdempotentRequest("dup-key", "POST", "/v1/transfers", b"x" * 32)

    def render(results: object) -> tuple[int, bytes]:
        return 201, b"{}"

    await engine.post(tenant_id, [Transfer(source, target, 1, "EUR")], request=key, render=render)
    committer = committer_of(engine)
    duplicate = Request(tenant_id, [Transfer(source, target, 1, "EUR")], True, key, render)
    fresh = [Request(tenant_id, [Transfer(source, target, 2, "EUR")]) for _ in range(3)]
    outcomes = await asyncio.gather(
        committer.submit(duplicate),
        *(committer.submit(p) for p in fresh),
        return_exceptions=True,
    )
    assert isinstance(outcomes[0], DuplicateKey)
    assert all(isinstance(o, list) and isinstance(o[0], Transaction) for o in outcomes[1:])
    async with database.connection() as connection:
        balance = await connection.fetchval("SELECT balance FROM wallets WHERE id = $1", target)
    assert balance == 1 + 3 * 2


async def test_an_atomic_failure_in_a_group_leaves_neighbours_intact(database: Database) -> None:
    tenant_id, (rich, poor, target) = await _wallets(database, 3)
    engine = Engine(database)
    await engine.post(tenant_id, [Credit(rich, 50, "EUR"), Credit(poor, 5, "EUR")])
    batch = Request(
        tenant_id, [Transfer(rich, target, 40, "EUR"), Transfer(poor, target, 6, "EUR")], True
    )
    neighbour = Request(tenant_id, [Transfer(rich, target, 50, "EUR")], True)
    batch_result, neighbour_result = await engine.post_group([batch, neighbour])
    assert isinstance(batch_result[0], ItemFailure)
    assert batch_result[0].index == 1
    assert isinstance(neighbour_result[0], Transaction)
    async with database.connection() as connection:
        balances = dict(
            await connection.fetch(
                "SELECT id, balance FROM wallets WHERE id = ANY($1::uuid[])", [rich, poor, target]
            )
        )
    assert balances == {rich: 0, poor: 5, target: 50}


async def test_first_credits_of_a_new_tenant_race_for_the_system_wallet(
    database: Database,
) -> None:
    tenant_id, wallets = await _wallets(database, 4)
    engines = [Engine(database) for _ in wallets]
    results = await asyncio.gather(
        *(
            engine.post(tenant_id, [Credit(w, 7, "EUR")])
            for engine, w in zip(engines, wallets, strict=True)
        )
    )
    assert all(isinstance(result[0], Transaction) for result in results)
    async with database.connection() as connection:
        systems = await connection.fetchval(
            "SELECT count(*) FROM wallets WHERE tenant_id = $1 AND is_system", tenant_id
        )
        total = await connection.fetchval(
            "SELECT sum(balance) FROM wallets WHERE tenant_id = $1", tenant_id
        )
    assert (systems, total) == (1, 0)


async def test_a_request_retried_alone_stores_and_returns_its_committed_answer(
    database: Database,
) -> None:
    """Regression (chaos seed 1171237398): the answer of the failed group attempt leaked."""
    import orjson

    from walletd.entrypoints.http.commands import _Memo, render_one

    tenant_id, (source, target) = await _wallets(database, 2)
    engine = Engine(database)
    await engine.post(tenant_id, [Credit(source, 100, "EUR")])
    taken = IdempotentRequest("taken", "POST", "/v1/transfers", b"t" * 32)
    await engine.post(
        tenant_id, [Transfer(source, target, 1, "EUR")], request=taken, render=_Memo(render_one())
    )
    committer = committer_of(engine)
    fresh_key = IdempotentRequest("fresh", "POST", "/v1/transfers", b"f" * 32)
    fresh_memo = _Memo(render_one())
    duplicate = Request(
        tenant_id, [Transfer(source, target, 1, "EUR")], True, taken, _Memo(render_one())
    )
    fresh = Request(tenant_id, [Transfer(source, target, 5, "EUR")], True, fresh_key, fresh_memo)
    outcomes = await asyncio.gather(
        committer.submit(duplicate), committer.submit(fresh), return_exceptions=True
    )
    assert isinstance(outcomes[0], DuplicateKey)
    results = outcomes[1]
    assert isinstance(results, list)
    status, body = fresh_memo(results)
    sent = orjson.loads(body)
    async with database.connection() as connection:
        stored = await connection.fetchval(
            "SELECT response_body FROM idempotency_keys WHERE tenant_id = $1 AND key = 'fresh'",
            tenant_id,
        )
        exists = await connection.fetchval(
            "SELECT count(*) FROM transactions WHERE id = $1", uuid.UUID(sent["id"])
        )
    assert status == 201
    assert bytes(stored) == body
    assert exists == 1
    assert isinstance(results[0], Transaction)
    assert sent["id"] == str(results[0].id)


async def test_a_bug_in_one_request_fails_that_request_alone(database: Database) -> None:
    """A request whose answer cannot be rendered (a bug) is its own 500, not the group's."""
    tenant_id, (source, target) = await _wallets(database, 2)
    engine = Engine(database)
    await engine.post(tenant_id, [Credit(source, 100, "EUR")])

    def broken(results: object) -> tuple[int, bytes]:
        raise RuntimeError("a bug in rendering this request")

    def fine(results: object) -> tuple[int, bytes]:
        return 201, b"{}"

    def keyed(name: str) -> IdempotentRequest:
        return IdempotentRequest(name, "POST", "/v1/transfers", b"k" * 32)

    committer = committer_of(engine)
    poisoned = Request(tenant_id, [Transfer(source, target, 1, "EUR")], True, keyed("bug"), broken)
    healthy = [
        Request(tenant_id, [Transfer(source, target, 2, "EUR")], True, keyed(f"ok-{i}"), fine)
        for i in range(3)
    ]
    outcomes = await asyncio.gather(
        committer.submit(poisoned),
        *(committer.submit(request) for request in healthy),
        return_exceptions=True,
    )
    assert isinstance(outcomes[0], RuntimeError)
    assert all(isinstance(o, list) and isinstance(o[0], Transaction) for o in outcomes[1:])
    async with database.connection() as connection:
        balance = await connection.fetchval("SELECT balance FROM wallets WHERE id = $1", target)
    assert balance == 3 * 2

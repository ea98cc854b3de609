"""The database enforces the ledger's rules by itself, whatever the engine does."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import asyncpg
import pytest

from walletd.adapters.postgres import Database
from walletd.domain.book import ItemFailure
from walletd.domain.commands import Credit, Transfer
from walletd.domain.records import Transaction
from walletd.service_layer.engine import Engine
from walletd.service_layer.tenants import create_api_key

pytestmark = pytest.mark.integration


async def _tenant_with_wallets(
    database: Database, count: int, currency: str = "EUR"
) -> tuple[uuid.UUID, list[uuid.UUID]]:
    async with database.connection() as connection:
        key = await create_api_key(connection, f"guards-{uuid.uuid4().hex[:8]}", ["read"])
        wallet_ids = await _wallets_of(database, key.tenant_id, count, currency)
    return key.tenant_id, wallet_ids


async def _wallets_of(
    database: Database, tenant_id: uuid.UUID, count: int, currency: str
) -> list[uuid.UUID]:
    wallet_ids = [uuid.uuid4() for _ in range(count)]
    now = datetime.now(UTC)
    async with database.connection() as connection:
        for wallet_id in wallet_ids:
            await connection.execute(
                "INSERT INTO wallets (id, tenant_id, currency, created_at, updated_at)"
                " VALUES ($1, $2, $3, $4, $4)",
                wallet_id,
                tenant_id,
                currency,
                now,
            )
    return wallet_ids


_INSERT_TRANSACTION = (
    "INSERT INTO transactions (id, tenant_id, type, status, amount, currency,"
    " created_at, updated_at) VALUES ($1, $2, 'transfer', 'posted', 5, 'EUR', $3, $3)"
)
_INSERT_ENTRIES = (
    "INSERT INTO entries (id, transaction_id, wallet_id, currency, amount,"
    " balance_after, wallet_version, hash, created_at)"
    " SELECT gen_random_uuid(), $1, e.wallet_id, e.currency, e.amount, e.amount, e.n,"
    " '\\x00', $2"
    " FROM unnest($3::uuid[], $4::text[], $5::bigint[]) WITH ORDINALITY"
    " AS e(wallet_id, currency, amount, n)"
)


async def _insert(
    database: Database,
    tenant_id: uuid.UUID,
    statements: list[list[tuple[uuid.UUID, str, int]]],
) -> uuid.UUID:
    """One transaction row, then each statement's entries, in one database transaction."""
    now = datetime.now(UTC)
    transaction_id = uuid.uuid4()
    async with database.connection() as connection, connection.transaction():
        await connection.execute(_INSERT_TRANSACTION, transaction_id, tenant_id, now)
        for entries in statements:
            await connection.execute(
                _INSERT_ENTRIES,
                transaction_id,
                now,
                [wallet for wallet, _, _ in entries],
                [currency for _, currency, _ in entries],
                [amount for _, _, amount in entries],
            )
    return transaction_id


async def _count(database: Database, transaction_id: uuid.UUID) -> int:
    async with database.connection() as connection:
        count: int = await connection.fetchval(
            "SELECT count(*) FROM entries WHERE transaction_id = $1", transaction_id
        )
        return count


@pytest.mark.parametrize(
    "statements",
    [
        pytest.param([[(0, "EUR", 5)]], id="one-entry"),
        pytest.param([[(0, "EUR", 5), (1, "EUR", -4)]], id="does-not-sum-to-zero"),
        pytest.param(
            [[(0, "EUR", 5), (1, "EUR", -5), (0, "USD", 3), (1, "USD", -2)]],
            id="one-currency-of-two-unbalanced",
        ),
        pytest.param([[(0, "EUR", 5)], [(1, "EUR", -5)]], id="balanced-only-across-statements"),
    ],
)
async def test_unbalanced_entries_are_refused(
    database: Database, statements: list[list[tuple[int, str, int]]]
) -> None:
    tenant_id, wallet_ids = await _tenant_with_wallets(database, 2)
    resolved = [
        [(wallet_ids[wallet], currency, amount) for wallet, currency, amount in entries]
        for entries in statements
    ]
    with pytest.raises(asyncpg.CheckViolationError, match="unbalanced") as refused:
        await _insert(database, tenant_id, resolved)
    assert refused.value.constraint_name == "entries_balanced"
    async with database.connection() as connection:
        assert (
            await connection.fetchval(
                "SELECT count(*) FROM entries e JOIN wallets w ON w.id = e.wallet_id"
                " WHERE w.tenant_id = $1",
                tenant_id,
            )
            == 0
        )


async def test_balanced_entries_are_accepted_in_one_statement(database: Database) -> None:
    tenant_id, (first, second) = await _tenant_with_wallets(database, 2)
    third, fourth = await _wallets_of(database, tenant_id, 2, "USD")
    balanced = [(first, "EUR", 5), (second, "EUR", -5), (third, "USD", 2), (fourth, "USD", -2)]
    transaction_id = await _insert(database, tenant_id, [balanced])
    assert await _count(database, transaction_id) == 4


async def test_entries_name_existing_wallets_of_their_currency(database: Database) -> None:
    tenant_id, (first, second) = await _tenant_with_wallets(database, 2)
    (dollars,) = await _wallets_of(database, tenant_id, 1, "USD")
    for entries in (
        [(first, "EUR", 5), (uuid.uuid4(), "EUR", -5)],  # no such wallet
        [(first, "USD", 5), (dollars, "USD", -5)],  # an EUR wallet
    ):
        with pytest.raises(asyncpg.ForeignKeyViolationError) as refused:
            await _insert(database, tenant_id, [entries])
        assert refused.value.constraint_name == "entries_references"
    assert await _insert(database, tenant_id, [[(first, "EUR", 5), (second, "EUR", -5)]])


async def test_transactions_name_their_own_tenants_wallets(database: Database) -> None:
    tenant_id, (own,) = await _tenant_with_wallets(database, 1)
    _, (foreign,) = await _tenant_with_wallets(database, 1)
    now = datetime.now(UTC)
    async with database.connection() as connection:
        for from_wallet, to_wallet in ((own, foreign), (uuid.uuid4(), own)):
            with pytest.raises(asyncpg.ForeignKeyViolationError) as refused:
                await connection.execute(
                    "INSERT INTO transactions (id, tenant_id, type, status, amount, currency,"
                    " from_wallet_id, to_wallet_id, created_at, updated_at)"
                    " VALUES ($1, $2, 'transfer', 'posted', 5, 'EUR', $3, $4, $5, $5)",
                    uuid.uuid4(),
                    tenant_id,
                    from_wallet,
                    to_wallet,
                    now,
                )
            assert refused.value.constraint_name == "transactions_references"
        with pytest.raises(asyncpg.ForeignKeyViolationError):
            await connection.execute(_INSERT_TRANSACTION, uuid.uuid4(), uuid.uuid4(), now)


async def test_tenants_wallets_and_transactions_are_never_deleted(database: Database) -> None:
    tenant_id, (wallet_id,) = await _tenant_with_wallets(database, 1)
    (posted,) = await Engine(database).post(tenant_id, [Credit(wallet_id, 10, "EUR")])
    assert isinstance(posted, Transaction)
    async with database.connection() as connection:
        for statement, argument in (
            ("DELETE FROM transactions WHERE id = $1", posted.id),
            ("DELETE FROM wallets WHERE id = $1", wallet_id),
            ("UPDATE wallets SET id = gen_random_uuid() WHERE id = $1", wallet_id),
            ("DELETE FROM tenants WHERE id = $1", tenant_id),
        ):
            with pytest.raises(asyncpg.RestrictViolationError, match="never deleted"):
                await connection.execute(statement, argument)


async def test_entries_cannot_be_changed_or_deleted(database: Database) -> None:
    tenant_id, (wallet_id,) = await _tenant_with_wallets(database, 1)
    (posted,) = await Engine(database).post(tenant_id, [Credit(wallet_id, 10, "EUR")])
    assert isinstance(posted, Transaction)
    async with database.connection() as connection:
        with pytest.raises(asyncpg.RestrictViolationError, match="append-only"):
            await connection.execute(
                "UPDATE entries SET amount = 11 WHERE transaction_id = $1", posted.id
            )
        with pytest.raises(asyncpg.RestrictViolationError, match="append-only"):
            await connection.execute("DELETE FROM entries WHERE transaction_id = $1", posted.id)


async def test_balance_floor_is_a_table_constraint(database: Database) -> None:
    _, (wallet_id,) = await _tenant_with_wallets(database, 1)
    async with database.connection() as connection:
        with pytest.raises(asyncpg.CheckViolationError, match="wallets_balance_floor"):
            await connection.execute("UPDATE wallets SET balance = -1 WHERE id = $1", wallet_id)


async def test_one_entry_per_wallet_version(database: Database) -> None:
    tenant_id, (wallet_id,) = await _tenant_with_wallets(database, 1)
    (posted,) = await Engine(database).post(tenant_id, [Credit(wallet_id, 10, "EUR")])
    assert isinstance(posted, Transaction)
    async with database.connection() as connection:
        entry = await connection.fetchrow("SELECT * FROM entries WHERE wallet_id = $1", wallet_id)
        with pytest.raises(asyncpg.UniqueViolationError):
            await connection.execute(
                "INSERT INTO entries (id, transaction_id, wallet_id, currency, amount,"
                " balance_after, wallet_version, hash, created_at)"
                " VALUES ($1, $2, $3, 'EUR', 1, 11, 1, '\\x00', now())",
                uuid.uuid4(),
                entry["transaction_id"],
                wallet_id,
            )


async def test_two_writers_racing_for_the_last_funds_exactly_one_wins(database: Database) -> None:
    tenant_id, (source, first, second) = await _tenant_with_wallets(database, 3)
    engine_a, engine_b = Engine(database), Engine(database)
    await engine_a.post(tenant_id, [Credit(source, 100, "EUR")])
    results = await asyncio.gather(
        engine_a.post(tenant_id, [Transfer(source, first, 100, "EUR")]),
        engine_b.post(tenant_id, [Transfer(source, second, 100, "EUR")]),
    )
    outcomes = sorted(type(result[0]).__name__ for result in results)
    assert outcomes == ["ItemFailure", "Transaction"]
    failure = next(result[0] for result in results if isinstance(result[0], ItemFailure))
    assert failure.error.code == "insufficient_funds"
    async with database.connection() as connection:
        balances = await connection.fetch(
            "SELECT id, balance FROM wallets WHERE id = ANY($1::uuid[])", [source, first, second]
        )
    assert sorted(row["balance"] for row in balances) == [0, 0, 100]


async def test_non_atomic_batch_isolates_failures(database: Database) -> None:
    tenant_id, (rich, poor, target) = await _tenant_with_wallets(database, 3)
    engine = Engine(database)
    await engine.post(tenant_id, [Credit(rich, 50, "EUR")])
    results = await engine.post(
        tenant_id,
        [
            Transfer(rich, target, 20, "EUR"),
            Transfer(poor, target, 1, "EUR"),
            Transfer(rich, target, 30, "EUR"),
            Transfer(rich, target, 1, "EUR"),
        ],
        atomic=False,
    )
    assert [type(result).__name__ for result in results] == [
        "Transaction",
        "ItemFailure",
        "Transaction",
        "ItemFailure",
    ]
    async with database.connection() as connection:
        assert await connection.fetchval("SELECT balance FROM wallets WHERE id = $1", target) == 50
        assert await connection.fetchval("SELECT version FROM wallets WHERE id = $1", target) == 2

"""Reversals against real PostgreSQL: mirror postings, once only, within the floor.

Each test gets a fresh tenant; money is set up through the real posting engine and
hold service, and reversed through :class:`ReversalService`.
"""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import UUID, uuid4

import pytest

from tests.support.events import published_events
from tests.support.ledger import Holds, Reversals
from walletd.adapters.ledger_queries import get_transaction
from walletd.adapters.postgres import Database
from walletd.domain.book import ItemFailure
from walletd.domain.commands import Credit, Debit, PostingCommand, Transfer
from walletd.domain.records import Transaction
from walletd.errors import (
    AlreadyReversed,
    InsufficientFunds,
    NotFound,
    ValidationFailed,
    WalletClosed,
    WalletdError,
)
from walletd.service_layer.engine import Engine
from walletd.service_layer.tenants import Principal, create_api_key
from walletd.service_layer.wallets import WalletService

pytestmark = pytest.mark.integration


class Ledger:
    def __init__(self, database: Database, principal: Principal) -> None:
        self.database, self.principal = database, principal
        self.tenant_id = principal.tenant_id
        self.engine = Engine(database)
        self.wallets = WalletService(database)
        self.holds = Holds(database, self.engine)
        self.reversals = Reversals(self.engine)

    async def wallet(self, balance: int = 0, overdraft: int = 0) -> UUID:
        wallet = await self.wallets.create(
            self.tenant_id, currency="EUR", owner_id=None, overdraft_limit=overdraft, metadata={}
        )
        if balance:
            await self.post(Credit(wallet.id, balance, "EUR"))
        return wallet.id

    async def post(self, command: PostingCommand) -> Transaction:
        (result,) = await self.engine.post(self.tenant_id, [command])
        assert not isinstance(result, ItemFailure), result
        return result

    async def balance(self, wallet_id: UUID) -> tuple[int, int]:
        wallet = await self.wallets.get(self.tenant_id, wallet_id)
        return wallet.balance, wallet.version

    async def reverse(self, transaction_id: UUID, reason: str | None = None) -> Transaction:
        return await self.reversals.reverse(self.principal, transaction_id, reason=reason)

    async def stored(self, transaction_id: UUID) -> Transaction:
        async with self.database.connection() as connection:
            found = await get_transaction(connection, self.tenant_id, transaction_id)
        assert found is not None
        return found

    async def rows(self, query: str, *args: Any) -> list[dict[str, Any]]:
        async with self.database.connection() as connection:
            return [dict(row) for row in await connection.fetch(query, *args)]

    async def system_wallet(self) -> UUID:
        return await self.engine.system_wallet(self.tenant_id, "EUR")


@pytest.fixture
async def ledger(database: Database) -> Ledger:
    async with database.connection() as connection:
        key = await create_api_key(
            connection, f"rev-{uuid4().hex[:12]}", ["read", "write", "admin"]
        )
    return Ledger(database, Principal(key.key_id, key.tenant_id, frozenset(key.scopes)))


def legs(transaction: Transaction) -> list[tuple[UUID, int]]:
    return sorted((entry.wallet_id, entry.amount) for entry in transaction.entries)


async def test_reversing_a_credit_takes_the_money_back_to_the_system_wallet(
    ledger: Ledger,
) -> None:
    wallet_id = await ledger.wallet()
    credit = await ledger.post(Credit(wallet_id, 700, "EUR", reference="r-1"))
    reversal = await ledger.reverse(credit.id, reason="sent by mistake")
    system = await ledger.system_wallet()
    assert (reversal.type, reversal.status, reversal.amount, reversal.currency) == (
        "reversal",
        "posted",
        700,
        "EUR",
    )
    assert reversal.reverses_transaction_id == credit.id
    assert legs(reversal) == sorted([(wallet_id, -700), (system, 700)])
    assert (reversal.from_wallet_id, reversal.to_wallet_id) == (wallet_id, None)
    assert await ledger.balance(wallet_id) == (0, 2)
    stored = await ledger.stored(reversal.id)
    assert (stored.reverses_transaction_id, legs(stored)) == (credit.id, legs(reversal))


async def test_reversing_a_debit_gives_the_money_back_to_the_wallet(ledger: Ledger) -> None:
    wallet_id = await ledger.wallet(1000)
    debit = await ledger.post(Debit(wallet_id, 300, "EUR"))
    reversal = await ledger.reverse(debit.id)
    assert [amount for wallet, amount in legs(reversal) if wallet == wallet_id] == [300]
    assert await ledger.balance(wallet_id) == (1000, 3)


async def test_reversing_a_transfer_moves_it_back_and_names_the_counterparty(
    ledger: Ledger,
) -> None:
    payer, payee = await ledger.wallet(1000), await ledger.wallet()
    transfer = await ledger.post(Transfer(payer, payee, 250, "EUR"))
    reversal = await ledger.reverse(transfer.id)
    assert legs(reversal) == sorted([(payee, -250), (payer, 250)])
    assert (reversal.from_wallet_id, reversal.to_wallet_id) == (payee, payer)
    assert (await ledger.balance(payer), await ledger.balance(payee)) == ((1000, 3), (0, 2))
    async with ledger.database.connection() as connection:
        events = [
            event
            for event in await published_events(connection, ledger.tenant_id)
            if event["data"].get("transaction_id") == str(reversal.id)
        ]
    assert [
        (
            e["type"],
            e["data"]["amount"],
            e["data"]["transaction_type"],
            e["data"]["counterparty_wallet_id"],
        )
        for e in events
    ] == [
        ("wallet.debited", -250, "reversal", str(payer)),
        ("wallet.credited", 250, "reversal", str(payee)),
    ]


async def test_reversing_captures_returns_the_money_to_the_held_wallet(ledger: Ledger) -> None:
    payer, payee = await ledger.wallet(1000), await ledger.wallet()
    outside = await ledger.holds.capture(
        ledger.tenant_id,
        (
            await ledger.holds.place(ledger.tenant_id, wallet_id=payer, amount=200, currency="EUR")
        ).id,
    )
    to_wallet = await ledger.holds.capture(
        ledger.tenant_id,
        (
            await ledger.holds.place(ledger.tenant_id, wallet_id=payer, amount=300, currency="EUR")
        ).id,
        amount=100,
        to_wallet_id=payee,
    )
    assert outside.transaction_id is not None
    assert to_wallet.transaction_id is not None
    assert (await ledger.balance(payer))[0] == 700
    await ledger.reverse(outside.transaction_id)
    reversal = await ledger.reverse(to_wallet.transaction_id)
    assert legs(reversal) == sorted([(payee, -100), (payer, 100)])
    assert (await ledger.balance(payer))[0] == 1000
    assert (await ledger.balance(payee))[0] == 0
    hold = await ledger.holds.get(ledger.tenant_id, outside.id)
    assert hold.status == "captured"


async def test_a_second_reversal_is_refused_as_already_reversed(ledger: Ledger) -> None:
    wallet_id = await ledger.wallet()
    credit = await ledger.post(Credit(wallet_id, 100, "EUR"))
    first = await ledger.reverse(credit.id)
    with pytest.raises(AlreadyReversed, match=str(first.id)):
        await ledger.reverse(credit.id)
    assert await ledger.balance(wallet_id) == (0, 2)


async def test_a_reversal_cannot_itself_be_reversed(ledger: Ledger) -> None:
    wallet_id = await ledger.wallet()
    reversal = await ledger.reverse((await ledger.post(Credit(wallet_id, 100, "EUR"))).id)
    with pytest.raises(ValidationFailed, match="reversals cannot be reversed"):
        await ledger.reverse(reversal.id)


async def test_a_reversal_that_would_break_the_floor_is_insufficient_funds(
    ledger: Ledger,
) -> None:
    wallet_id, other = await ledger.wallet(overdraft=50), await ledger.wallet()
    credit = await ledger.post(Credit(wallet_id, 500, "EUR"))
    await ledger.post(Transfer(wallet_id, other, 400, "EUR"))
    with pytest.raises(InsufficientFunds, match=r"would take wallet .* below its floor"):
        await ledger.reverse(credit.id)
    assert await ledger.balance(wallet_id) == (100, 2)
    reversals = await ledger.rows(
        "SELECT id FROM transactions WHERE reverses_transaction_id = $1", credit.id
    )
    assert reversals == []


async def test_a_reversal_may_use_the_overdraft_of_the_paying_wallet(ledger: Ledger) -> None:
    wallet_id, other = await ledger.wallet(overdraft=400), await ledger.wallet()
    credit = await ledger.post(Credit(wallet_id, 500, "EUR"))
    await ledger.post(Transfer(wallet_id, other, 400, "EUR"))
    await ledger.reverse(credit.id)
    assert await ledger.balance(wallet_id) == (-400, 3)


async def test_a_frozen_wallet_can_still_be_reversed_but_a_closed_one_cannot(
    ledger: Ledger,
) -> None:
    frozen, closed, other = await ledger.wallet(), await ledger.wallet(), await ledger.wallet()
    credit = await ledger.post(Credit(frozen, 100, "EUR"))
    await ledger.wallets.change_status(ledger.principal, frozen, "freeze", None)
    await ledger.reverse(credit.id)
    assert await ledger.balance(frozen) == (0, 2)
    await ledger.post(Credit(closed, 100, "EUR"))
    transfer = await ledger.post(Transfer(closed, other, 100, "EUR"))
    await ledger.wallets.change_status(ledger.principal, closed, "close", None)
    with pytest.raises(WalletClosed):
        await ledger.reverse(transfer.id)


async def test_only_posted_transactions_of_the_tenant_can_be_reversed(
    ledger: Ledger,
    database: Database,
) -> None:
    wallet_id = await ledger.wallet()
    pending = uuid4()
    async with database.connection() as connection:
        await connection.execute(
            "INSERT INTO transactions (id, tenant_id, type, status, amount, currency,"
            " from_wallet_id, created_at, updated_at)"
            " VALUES ($1, $2, 'debit', 'pending_review', 10, 'EUR', $3, now(), now())",
            pending,
            ledger.tenant_id,
            wallet_id,
        )
    with pytest.raises(ValidationFailed, match="pending_review"):
        await ledger.reverse(pending)
    with pytest.raises(NotFound):
        await ledger.reverse(uuid4())
    credit = await ledger.post(Credit(wallet_id, 100, "EUR"))
    async with database.connection() as connection:
        other = await create_api_key(connection, f"other-{uuid4().hex[:12]}", ["admin"])
    stranger = Principal(other.key_id, other.tenant_id, frozenset(other.scopes))
    with pytest.raises(NotFound):
        await ledger.reversals.reverse(stranger, credit.id)


async def test_a_reversal_is_in_the_admin_log_with_who_and_why(ledger: Ledger) -> None:
    wallet_id = await ledger.wallet()
    credit = await ledger.post(Credit(wallet_id, 100, "EUR"))
    reversal = await ledger.reverse(credit.id, reason="chargeback")
    [row] = await ledger.rows(
        "SELECT key_id, action, target_type, target_id, before, after FROM audit_log"
        " WHERE tenant_id = $1 AND action = 'transaction.reverse'",
        ledger.tenant_id,
    )
    assert row == {
        "key_id": ledger.principal.key_id,
        "action": "transaction.reverse",
        "target_type": "transaction",
        "target_id": str(credit.id),
        "before": {"status": "posted", "reversed_by": None},
        "after": {"status": "posted", "reversed_by": str(reversal.id), "reason": "chargeback"},
    }


async def test_concurrent_reversals_of_one_transaction_post_exactly_one(ledger: Ledger) -> None:
    payer, payee = await ledger.wallet(1000), await ledger.wallet()
    transfer = await ledger.post(Transfer(payer, payee, 100, "EUR"))

    async def reverse() -> Transaction | WalletdError:
        try:
            return await ledger.reverse(transfer.id)
        except WalletdError as error:
            return error

    results = await asyncio.gather(*(reverse() for _ in range(10)))
    posted = [result for result in results if isinstance(result, Transaction)]
    refused = [result for result in results if isinstance(result, AlreadyReversed)]
    assert (len(posted), len(refused)) == (1, 9)
    assert (await ledger.balance(payer))[0] == 1000

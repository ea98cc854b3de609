"""Wallet limits against real PostgreSQL: each limit at and across its boundary, under load.

Limits are checked and counted when money leaves a wallet (debits, transfers out,
captures); a hold is checked against ``max_debit_amount`` only; money coming in is
never limited. Amount limits stay exact when debits race each other.
"""

from __future__ import annotations

import asyncio
from uuid import UUID, uuid4

import pytest

from tests.support.ledger import Holds
from walletd.adapters.postgres import Database
from walletd.domain.book import ItemFailure, Outcome
from walletd.domain.commands import Credit, Debit, PostingCommand, Transfer
from walletd.domain.ledger import Limits
from walletd.domain.records import Transaction
from walletd.errors import LimitExceeded
from walletd.service_layer.engine import Engine
from walletd.service_layer.tenants import Principal, create_api_key
from walletd.service_layer.wallets import WalletService


class Ledger:
    """One fresh tenant and the services a test drives."""

    def __init__(self, database: Database, principal: Principal) -> None:
        self.database, self.principal = database, principal
        self.engine = Engine(database)
        self.wallets = WalletService(database)
        self.tenant_id = principal.tenant_id

    async def wallet(self, funded: int = 0, limits: Limits | None = None) -> UUID:
        wallet = await self.wallets.create(
            self.tenant_id, currency="EUR", owner_id=None, overdraft_limit=0, metadata={}
        )
        if funded:
            await self.post(Credit(wallet.id, funded, "EUR"))
        if limits is not None:
            await self.wallets.set_limits(self.principal, wallet.id, limits)
        return wallet.id

    async def post(self, *commands: PostingCommand, atomic: bool = True) -> list[Outcome]:
        return await self.engine.post(self.tenant_id, list(commands), atomic=atomic)

    async def debit(self, wallet_id: UUID, amount: int) -> Outcome:
        (result,) = await self.post(Debit(wallet_id, amount, "EUR"))
        return result

    async def transfer(self, source: UUID, destination: UUID, amount: int) -> Outcome:
        (result,) = await self.post(Transfer(source, destination, amount, "EUR"))
        return result

    async def state(self, wallet_id: UUID) -> tuple[int, int, int]:
        """(balance, version, debit_day_total) as stored."""
        async with self.database.connection() as connection:
            row = await connection.fetchrow(
                "SELECT balance, version, debit_day_total FROM wallets WHERE id = $1", wallet_id
            )
        return row["balance"], row["version"], row["debit_day_total"]


@pytest.fixture
async def ledger(database: Database) -> Ledger:
    async with database.connection() as connection:
        key = await create_api_key(connection, f"limits-{uuid4().hex[:12]}", ["admin"])
    return Ledger(database, Principal(key.key_id, key.tenant_id, frozenset(key.scopes)))


def refused(result: Outcome, limit_name: str) -> str:
    assert isinstance(result, ItemFailure), result
    assert isinstance(result.error, LimitExceeded)
    assert result.error.detail.startswith(f"{limit_name}:"), result.error.detail
    return result.error.detail


def posted(result: Outcome) -> Transaction:
    assert isinstance(result, Transaction), result
    assert result.status == "posted"
    return result


async def test_max_debit_amount_allows_the_limit_and_refuses_one_cent_more(
    ledger: Ledger,
) -> None:
    wallet = await ledger.wallet(funded=10_000, limits=Limits(max_debit_amount=500))
    payee = await ledger.wallet()
    posted(await ledger.debit(wallet, 500))
    posted(await ledger.transfer(wallet, payee, 500))
    detail = refused(await ledger.debit(wallet, 501), "max_debit_amount")
    assert detail == "max_debit_amount: 501 is above the limit of 500"
    refused(await ledger.transfer(wallet, payee, 501), "max_debit_amount")
    assert await ledger.state(wallet) == (9_000, 3, 1_000)


async def test_money_coming_in_is_never_limited(ledger: Ledger) -> None:
    limits = Limits(max_debit_amount=10, daily_debit_amount=10, max_debits_per_minute=1)
    wallet = await ledger.wallet(funded=5_000, limits=limits)
    payer = await ledger.wallet(funded=6_000)
    posted((await ledger.post(Credit(wallet, 5_000, "EUR")))[0])
    posted(await ledger.transfer(payer, wallet, 5_000))
    posted(await ledger.transfer(payer, wallet, 1))
    assert await ledger.state(wallet) == (15_001, 4, 0)


async def test_daily_debit_amount_allows_exactly_the_limit_across_debits_and_transfers(
    ledger: Ledger,
) -> None:
    wallet = await ledger.wallet(funded=1_000, limits=Limits(daily_debit_amount=100))
    payee = await ledger.wallet()
    posted(await ledger.debit(wallet, 60))
    posted(await ledger.transfer(wallet, payee, 40))
    detail = refused(await ledger.debit(wallet, 1), "daily_debit_amount")
    assert detail == (
        "daily_debit_amount: 100 already sent today, 1 more is above the limit of 100"
    )
    refused(await ledger.transfer(wallet, payee, 1), "daily_debit_amount")
    assert await ledger.state(wallet) == (900, 3, 100)


async def test_daily_total_of_an_earlier_utc_day_does_not_count(ledger: Ledger) -> None:
    wallet = await ledger.wallet(funded=1_000, limits=Limits(daily_debit_amount=100))
    posted(await ledger.debit(wallet, 100))
    refused(await ledger.debit(wallet, 1), "daily_debit_amount")
    async with ledger.database.connection() as connection:
        await connection.execute(
            "UPDATE wallets SET debit_day = debit_day - 1 WHERE id = $1", wallet
        )
    posted(await ledger.debit(wallet, 100))
    assert await ledger.state(wallet) == (800, 3, 100)


async def test_max_debits_per_minute_counts_debits_and_transfers_out(ledger: Ledger) -> None:
    wallet = await ledger.wallet(funded=1_000, limits=Limits(max_debits_per_minute=3))
    payee = await ledger.wallet(funded=1_000)
    posted(await ledger.debit(wallet, 1))
    posted(await ledger.transfer(wallet, payee, 1))
    posted(await ledger.transfer(payee, wallet, 1))  # money in is not a debit
    posted(await ledger.debit(wallet, 1))
    detail = refused(await ledger.debit(wallet, 1), "max_debits_per_minute")
    assert detail == "max_debits_per_minute: 3 debits in the last minute, the limit is 3"
    refused(await ledger.transfer(wallet, payee, 1), "max_debits_per_minute")
    assert (await ledger.state(wallet))[:2] == (998, 5)


async def test_per_minute_limit_counts_earlier_items_of_the_same_batch(ledger: Ledger) -> None:
    wallet = await ledger.wallet(funded=1_000, limits=Limits(max_debits_per_minute=2))
    payee = await ledger.wallet()
    results = await ledger.post(
        *(Transfer(wallet, payee, 10, "EUR") for _ in range(3)), atomic=False
    )
    posted(results[0])
    posted(results[1])
    refused(results[2], "max_debits_per_minute")
    assert (await ledger.state(wallet))[:2] == (980, 3)


async def test_concurrent_debits_never_exceed_the_daily_limit(ledger: Ledger) -> None:
    wallet = await ledger.wallet(funded=10_000, limits=Limits(daily_debit_amount=100))
    results = await asyncio.gather(*(ledger.debit(wallet, 30) for _ in range(10)))
    assert sum(isinstance(result, Transaction) for result in results) == 3
    for result in results:
        if isinstance(result, ItemFailure):
            refused(result, "daily_debit_amount")
    assert await ledger.state(wallet) == (9_910, 4, 90)


async def test_concurrent_debits_never_exceed_the_per_minute_limit(ledger: Ledger) -> None:
    wallet = await ledger.wallet(funded=10_000, limits=Limits(max_debits_per_minute=4))
    results = await asyncio.gather(*(ledger.debit(wallet, 5) for _ in range(10)))
    assert sum(isinstance(result, Transaction) for result in results) == 4
    assert (await ledger.state(wallet))[:2] == (9_980, 5)


async def test_a_hold_is_checked_against_max_debit_amount_only_and_its_capture_is_limited(
    ledger: Ledger,
) -> None:
    limits = Limits(max_debit_amount=500, daily_debit_amount=100, max_debits_per_minute=1)
    wallet = await ledger.wallet(funded=1_000, limits=limits)
    holds = Holds(ledger.database, ledger.engine)
    with pytest.raises(LimitExceeded, match=r"^max_debit_amount: 501"):
        await holds.place(ledger.tenant_id, wallet_id=wallet, amount=501, currency="EUR")
    big = await holds.place(ledger.tenant_id, wallet_id=wallet, amount=400, currency="EUR")
    small = await holds.place(ledger.tenant_id, wallet_id=wallet, amount=100, currency="EUR")
    with pytest.raises(LimitExceeded, match=r"^daily_debit_amount: 0 already sent today, 400"):
        await holds.capture(ledger.tenant_id, big.id)
    captured = await holds.capture(ledger.tenant_id, small.id)
    assert captured.captured_amount == 100
    refused(await ledger.debit(wallet, 1), "daily_debit_amount")
    assert await ledger.state(wallet) == (900, 2, 100)

"""Holds against real PostgreSQL: the service layer's rules, events, expiry and races.

Each test gets a fresh tenant. Concurrency tests run real concurrent transactions on
separate pooled connections (and two pools standing in for two API processes).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import pytest

from tests.support.events import published_events
from tests.support.ledger import Holds
from walletd.adapters.ledger_queries import get_transaction
from walletd.adapters.postgres import Database
from walletd.domain.book import ItemFailure
from walletd.domain.commands import Credit, Debit
from walletd.domain.ledger import Limits
from walletd.domain.records import Hold, Wallet
from walletd.errors import (
    CurrencyMismatch,
    HoldNotPending,
    InsufficientFunds,
    LimitExceeded,
    NotFound,
    SameWallet,
    ValidationFailed,
    WalletClosed,
    WalletdError,
    WalletFrozen,
    WalletNotEmpty,
)
from walletd.service_layer.engine import Engine
from walletd.service_layer.tenants import Principal, create_api_key
from walletd.service_layer.wallets import WalletService

pytestmark = pytest.mark.integration


class Ledger:
    """One tenant's view of the services, with small helpers for setting up wallets."""

    def __init__(self, database: Database, principal: Principal) -> None:
        self.database = database
        self.principal = principal
        self.tenant_id = principal.tenant_id
        self.engine = Engine(database)
        self.wallets = WalletService(database)
        self.holds = Holds(database, self.engine)

    async def wallet(self, balance: int = 0, currency: str = "EUR", overdraft: int = 0) -> UUID:
        wallet = await self.wallets.create(
            self.tenant_id,
            currency=currency,
            owner_id=None,
            overdraft_limit=overdraft,
            metadata={},
        )
        if balance:
            (result,) = await self.engine.post(
                self.tenant_id, [Credit(wallet.id, balance, currency)]
            )
            assert not isinstance(result, ItemFailure), result
        return wallet.id

    async def read(self, wallet_id: UUID) -> Wallet:
        return await self.wallets.get(self.tenant_id, wallet_id)

    async def hold(self, wallet_id: UUID, amount: int, **fields: Any) -> Hold:
        return await self.holds.place(
            self.tenant_id,
            wallet_id=wallet_id,
            amount=amount,
            currency=fields.pop("currency", "EUR"),
            **fields,
        )

    async def events(self, *types: str) -> list[tuple[str, dict[str, Any]]]:
        async with self.database.connection() as connection:
            events = await published_events(connection, self.tenant_id)
        return [(event["type"], event) for event in events if not types or event["type"] in types]

    async def entry_count(self, wallet_id: UUID) -> int:
        async with self.database.connection() as connection:
            count: int = await connection.fetchval(
                "SELECT count(*) FROM entries WHERE wallet_id = $1", wallet_id
            )
        return count

    async def set_hold_expiry(self, hold_id: UUID, expires_at: datetime) -> None:
        """Move a hold's expiry (the API refuses past ones) to make it due now."""
        async with self.database.connection() as connection:
            await connection.execute(
                "UPDATE holds SET expires_at = $2 WHERE id = $1", hold_id, expires_at
            )


@pytest.fixture
async def ledger(database: Database) -> Ledger:
    async with database.connection() as connection:
        key = await create_api_key(
            connection, f"holds-{uuid4().hex[:12]}", ["read", "write", "admin"]
        )
    return Ledger(database, Principal(key.key_id, key.tenant_id, frozenset(key.scopes)))


def balances(wallet: Wallet) -> tuple[int, int, int]:
    return wallet.balance, wallet.held_balance, wallet.available_balance


async def test_a_hold_reserves_funds_without_an_entry_and_emits_hold_created(
    ledger: Ledger,
) -> None:
    wallet_id = await ledger.wallet(1000)
    expires_at = datetime.now(UTC) + timedelta(hours=1)
    hold = await ledger.hold(wallet_id, 300, expires_at=expires_at)
    assert (hold.status, hold.amount, hold.captured_amount, hold.transaction_id) == (
        "pending",
        300,
        None,
        None,
    )
    assert hold.expires_at == expires_at
    assert balances(await ledger.read(wallet_id)) == (1000, 300, 700)
    assert await ledger.entry_count(wallet_id) == 1
    assert await ledger.holds.get(ledger.tenant_id, hold.id) == hold
    [(_, event)] = await ledger.events("hold.created")
    assert event["subject"] == str(wallet_id)
    assert event["data"] == {
        "tenant_id": str(ledger.tenant_id),
        "hold_id": str(hold.id),
        "wallet_id": str(wallet_id),
        "status": "pending",
        "amount": 300,
        "currency": "EUR",
        "captured_amount": None,
        "transaction_id": None,
    }


async def test_a_full_capture_posts_one_capture_to_the_outside(ledger: Ledger) -> None:
    wallet_id = await ledger.wallet(1000)
    hold = await ledger.hold(wallet_id, 400)
    captured = await ledger.holds.capture(ledger.tenant_id, hold.id)
    assert (captured.status, captured.captured_amount) == ("captured", 400)
    assert captured.transaction_id is not None
    assert balances(await ledger.read(wallet_id)) == (600, 0, 600)
    async with ledger.database.connection() as connection:
        transaction = await get_transaction(connection, ledger.tenant_id, captured.transaction_id)
    assert transaction is not None
    assert (transaction.type, transaction.status, transaction.amount, transaction.hold_id) == (
        "capture",
        "posted",
        400,
        hold.id,
    )
    assert [(e.wallet_id == wallet_id, e.amount) for e in transaction.entries] == [
        (True, -400),
        (False, 400),
    ]
    entry_events = await ledger.events("wallet.debited", "wallet.credited")
    capture_events = [
        data
        for _, data in entry_events
        if data["data"]["transaction_id"] == str(captured.transaction_id)
    ]
    assert [
        (e["type"], e["data"]["amount"], e["data"]["transaction_type"]) for e in capture_events
    ] == [("wallet.debited", -400, "capture"), ("wallet.credited", 400, "capture")]
    [(_, event)] = await ledger.events("hold.captured")
    assert (event["data"]["captured_amount"], event["data"]["transaction_id"]) == (
        400,
        str(captured.transaction_id),
    )


async def test_a_partial_capture_to_a_wallet_pays_it_and_releases_the_rest(
    ledger: Ledger,
) -> None:
    payer, payee = await ledger.wallet(1000), await ledger.wallet()
    hold = await ledger.hold(payer, 500)
    captured = await ledger.holds.capture(ledger.tenant_id, hold.id, amount=120, to_wallet_id=payee)
    assert (captured.status, captured.captured_amount) == ("captured", 120)
    assert balances(await ledger.read(payer)) == (880, 0, 880)
    assert balances(await ledger.read(payee)) == (120, 0, 120)
    async with ledger.database.connection() as connection:
        row = await connection.fetchrow(
            "SELECT type, amount, from_wallet_id, to_wallet_id, hold_id FROM transactions"
            " WHERE id = $1",
            captured.transaction_id,
        )
    assert dict(row) == {
        "type": "capture",
        "amount": 120,
        "from_wallet_id": payer,
        "to_wallet_id": payee,
        "hold_id": hold.id,
    }
    debited = [
        data["data"]
        for _, data in await ledger.events("wallet.debited")
        if data["data"]["transaction_id"] == str(captured.transaction_id)
    ]
    assert debited[0]["counterparty_wallet_id"] == str(payee)


async def test_capturing_more_than_held_is_refused_and_changes_nothing(ledger: Ledger) -> None:
    wallet_id = await ledger.wallet(1000)
    hold = await ledger.hold(wallet_id, 300)
    with pytest.raises(ValidationFailed, match="above the held 300"):
        await ledger.holds.capture(ledger.tenant_id, hold.id, amount=301)
    assert (await ledger.holds.get(ledger.tenant_id, hold.id)).status == "pending"
    assert balances(await ledger.read(wallet_id)) == (1000, 300, 700)


async def test_a_void_releases_the_hold_and_a_finished_hold_cannot_be_used_again(
    ledger: Ledger,
) -> None:
    wallet_id = await ledger.wallet(1000)
    hold = await ledger.hold(wallet_id, 300)
    voided = await ledger.holds.void(ledger.tenant_id, hold.id)
    assert (voided.status, voided.captured_amount, voided.transaction_id) == ("voided", None, None)
    assert balances(await ledger.read(wallet_id)) == (1000, 0, 1000)
    with pytest.raises(HoldNotPending, match="is voided"):
        await ledger.holds.void(ledger.tenant_id, hold.id)
    with pytest.raises(HoldNotPending, match="is voided"):
        await ledger.holds.capture(ledger.tenant_id, hold.id)
    assert [t for t, _ in await ledger.events("hold.voided")] == ["hold.voided"]
    assert balances(await ledger.read(wallet_id)) == (1000, 0, 1000)


async def test_a_hold_cannot_expire_in_the_past_or_without_a_time_zone(ledger: Ledger) -> None:
    wallet_id = await ledger.wallet(1000)
    with pytest.raises(ValidationFailed, match="in the future"):
        await ledger.hold(wallet_id, 10, expires_at=datetime.now(UTC) - timedelta(seconds=1))
    with pytest.raises(ValidationFailed, match="time zone"):
        await ledger.hold(wallet_id, 10, expires_at=datetime(2099, 1, 1))
    assert balances(await ledger.read(wallet_id)) == (1000, 0, 1000)


async def test_holds_follow_the_wallet_rules(ledger: Ledger) -> None:
    wallet_id = await ledger.wallet(1000)
    with pytest.raises(InsufficientFunds):
        await ledger.hold(wallet_id, 1001)
    with pytest.raises(CurrencyMismatch):
        await ledger.hold(wallet_id, 10, currency="USD")
    with pytest.raises(ValidationFailed):
        await ledger.hold(wallet_id, 0)
    with pytest.raises(NotFound):
        await ledger.hold(uuid4(), 10)
    await ledger.wallets.set_limits(ledger.principal, wallet_id, Limits(max_debit_amount=500))
    with pytest.raises(LimitExceeded, match="max_debit_amount"):
        await ledger.hold(wallet_id, 501)
    await ledger.wallets.change_status(ledger.principal, wallet_id, "freeze", "test")
    with pytest.raises(WalletFrozen):
        await ledger.hold(wallet_id, 10)
    empty = await ledger.wallet()
    await ledger.wallets.change_status(ledger.principal, empty, "close", None)
    with pytest.raises(WalletClosed):
        await ledger.hold(empty, 10)
    assert balances(await ledger.read(wallet_id)) == (1000, 0, 1000)
    assert await ledger.events("hold.created") == []


async def test_a_hold_may_use_the_overdraft_and_debits_cannot_spend_held_funds(
    ledger: Ledger,
) -> None:
    wallet_id = await ledger.wallet(100, overdraft=50)
    await ledger.hold(wallet_id, 150)
    (failure,) = await ledger.engine.post(ledger.tenant_id, [Debit(wallet_id, 1, "EUR")])
    assert isinstance(failure, ItemFailure)
    assert isinstance(failure.error, InsufficientFunds)
    assert balances(await ledger.read(wallet_id)) == (100, 150, -50)


async def test_a_frozen_wallet_can_void_but_not_capture(ledger: Ledger) -> None:
    wallet_id = await ledger.wallet(1000)
    first, second = await ledger.hold(wallet_id, 100), await ledger.hold(wallet_id, 200)
    await ledger.wallets.change_status(ledger.principal, wallet_id, "freeze", None)
    with pytest.raises(WalletFrozen):
        await ledger.holds.capture(ledger.tenant_id, first.id)
    await ledger.holds.void(ledger.tenant_id, second.id)
    assert balances(await ledger.read(wallet_id)) == (1000, 100, 900)


async def test_capture_destination_must_exist_differ_and_share_the_currency(
    ledger: Ledger,
) -> None:
    wallet_id, dollars = await ledger.wallet(1000), await ledger.wallet(currency="USD")
    hold = await ledger.hold(wallet_id, 100)
    with pytest.raises(NotFound):
        await ledger.holds.capture(ledger.tenant_id, hold.id, to_wallet_id=uuid4())
    with pytest.raises(CurrencyMismatch):
        await ledger.holds.capture(ledger.tenant_id, hold.id, to_wallet_id=dollars)
    with pytest.raises(SameWallet):
        await ledger.holds.capture(ledger.tenant_id, hold.id, to_wallet_id=wallet_id)
    with pytest.raises(NotFound):
        await ledger.holds.capture(ledger.tenant_id, uuid4())
    assert (await ledger.holds.get(ledger.tenant_id, hold.id)).status == "pending"


async def test_another_tenants_hold_does_not_exist(ledger: Ledger, database: Database) -> None:
    wallet_id = await ledger.wallet(1000)
    hold = await ledger.hold(wallet_id, 100)
    async with database.connection() as connection:
        other = await create_api_key(connection, f"other-{uuid4().hex[:12]}", ["write"])
    for action in (ledger.holds.get, ledger.holds.capture, ledger.holds.void):
        with pytest.raises(NotFound):
            await action(other.tenant_id, hold.id)


async def test_a_wallet_with_a_pending_hold_cannot_be_closed(ledger: Ledger) -> None:
    overdrawn = await ledger.wallet(overdraft=100)
    await ledger.hold(overdrawn, 100)
    with pytest.raises(WalletNotEmpty):
        await ledger.wallets.change_status(ledger.principal, overdrawn, "close", None)


async def test_capturing_a_hold_past_its_expiry_expires_it_instead(ledger: Ledger) -> None:
    wallet_id = await ledger.wallet(1000)
    hold = await ledger.hold(wallet_id, 300, expires_at=datetime.now(UTC) + timedelta(hours=1))
    await ledger.set_hold_expiry(hold.id, datetime.now(UTC) - timedelta(seconds=1))
    with pytest.raises(HoldNotPending, match="expired"):
        await ledger.holds.capture(ledger.tenant_id, hold.id)
    assert (await ledger.holds.get(ledger.tenant_id, hold.id)).status == "expired"
    assert balances(await ledger.read(wallet_id)) == (1000, 0, 1000)
    with pytest.raises(HoldNotPending, match="is expired"):
        await ledger.holds.void(ledger.tenant_id, hold.id)
    assert len(await ledger.events("hold.expired")) == 1
    assert await ledger.entry_count(wallet_id) == 1


async def test_expire_due_releases_due_holds_only_and_once(ledger: Ledger) -> None:
    wallet_id, other_id = await ledger.wallet(1000), await ledger.wallet(1000)
    later = datetime.now(UTC) + timedelta(hours=1)
    due = [
        await ledger.hold(wallet_id, 100, expires_at=later),
        await ledger.hold(other_id, 50, expires_at=later),
    ]
    kept = await ledger.hold(wallet_id, 200, expires_at=later)
    forever = await ledger.hold(wallet_id, 300)
    for hold in due:
        await ledger.set_hold_expiry(hold.id, datetime.now(UTC) - timedelta(seconds=1))
    assert await ledger.holds.expire_due() >= 2  # other tests' due holds may expire too
    statuses = [
        (await ledger.holds.get(ledger.tenant_id, h.id)).status for h in (*due, kept, forever)
    ]
    assert statuses == ["expired", "expired", "pending", "pending"]
    assert balances(await ledger.read(wallet_id)) == (1000, 500, 500)
    assert balances(await ledger.read(other_id)) == (1000, 0, 1000)
    await ledger.holds.expire_due()
    expired = [data["data"]["hold_id"] for _, data in await ledger.events("hold.expired")]
    assert sorted(expired) == sorted(str(hold.id) for hold in due)


async def test_two_processes_expiring_at_once_expire_each_hold_exactly_once(
    ledger: Ledger,
    database_url: str,
) -> None:
    wallets = [await ledger.wallet(1000) for _ in range(5)]
    later = datetime.now(UTC) + timedelta(hours=1)
    holds = [await ledger.hold(wallets[i % 5], 10 + i, expires_at=later) for i in range(30)]
    for hold in holds:
        await ledger.set_hold_expiry(hold.id, datetime.now(UTC) - timedelta(seconds=1))
    pools = [Database(database_url, min_size=1, max_size=4) for _ in range(2)]
    for pool in pools:
        await pool.connect()
    try:
        services = [Holds(pool, Engine(pool)) for pool in pools]
        await asyncio.gather(*(service.expire_due() for service in services * 2))
    finally:
        for pool in pools:
            await pool.close()
    expired = [data["data"]["hold_id"] for _, data in await ledger.events("hold.expired")]
    assert sorted(expired) == sorted(str(hold.id) for hold in holds)
    for wallet_id in wallets:
        assert balances(await ledger.read(wallet_id)) == (1000, 0, 1000)


async def test_twenty_concurrent_captures_of_one_hold_succeed_exactly_once(
    ledger: Ledger,
) -> None:
    wallet_id = await ledger.wallet(1000)
    hold = await ledger.hold(wallet_id, 500)

    async def capture() -> Hold | WalletdError:
        try:
            return await ledger.holds.capture(ledger.tenant_id, hold.id, amount=500)
        except WalletdError as error:
            return error

    results = await asyncio.gather(*(capture() for _ in range(20)))
    captured = [result for result in results if isinstance(result, Hold)]
    refused = [result for result in results if isinstance(result, HoldNotPending)]
    assert (len(captured), len(refused)) == (1, 19)
    assert balances(await ledger.read(wallet_id)) == (500, 0, 500)
    assert len(await ledger.events("hold.captured")) == 1


async def test_concurrent_holds_and_debits_never_take_available_below_the_floor(
    ledger: Ledger,
) -> None:
    wallet_id = await ledger.wallet(1000, overdraft=200)

    async def hold() -> bool:
        try:
            await ledger.hold(wallet_id, 100)
        except InsufficientFunds:
            return False
        return True

    async def debit() -> bool:
        (result,) = await ledger.engine.post(ledger.tenant_id, [Debit(wallet_id, 100, "EUR")])
        if isinstance(result, ItemFailure):
            assert isinstance(result.error, InsufficientFunds)
            return False
        return True

    results = await asyncio.gather(*(hold() if i % 2 else debit() for i in range(19)))
    assert sum(results) == 12  # (1000 + 200) / 100
    wallet = await ledger.read(wallet_id)
    assert wallet.available_balance == -200
    assert wallet.balance - wallet.held_balance == -200

"""Risk rules and the review queue against real PostgreSQL, through the posting engine.

A ``review`` rule holds the funds and writes a ``pending_review`` transaction without
entries; approving posts it, rejecting releases it; a ``reject`` rule refuses the
movement. Balances, statuses, outbox events and the admin log are checked exactly.
"""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import UUID, uuid4

import pytest

from tests.support.events import published_events
from tests.support.ledger import Reviews
from walletd.adapters.postgres import Database
from walletd.domain.book import ItemFailure, Outcome
from walletd.domain.commands import Credit, Debit, PostingCommand, Transfer
from walletd.domain.ledger import Limits
from walletd.domain.records import Transaction
from walletd.errors import (
    InsufficientFunds,
    LimitExceeded,
    NotFound,
    ReviewNotPending,
    RiskRejected,
    ValidationFailed,
    WalletFrozen,
)
from walletd.service_layer.engine import Engine, Request
from walletd.service_layer.risk_rules import RiskRuleService
from walletd.service_layer.tenants import Principal, create_api_key
from walletd.service_layer.wallets import WalletService


def rule(name: str, rule_type: str, action: str = "review", **params: Any) -> dict[str, Any]:
    return {"name": name, "type": rule_type, "params": params, "action": action}


BIG_DEBITS = rule("big", "amount_at_least", amount=1_000, currency="EUR")


class Desk:
    """One fresh tenant with its rules, wallets and the admin's services."""

    def __init__(self, database: Database, principal: Principal) -> None:
        self.database, self.principal = database, principal
        self.tenant_id = principal.tenant_id
        self.engine = Engine(database)
        self.wallets = WalletService(database)
        self.rules = RiskRuleService(database)
        self.reviews = Reviews(database, self.engine)

    async def wallet(self, funded: int = 0, currency: str = "EUR") -> UUID:
        wallet = await self.wallets.create(
            self.tenant_id, currency=currency, owner_id=None, overdraft_limit=0, metadata={}
        )
        if funded:
            await self.post(Credit(wallet.id, funded, currency))
        return wallet.id

    async def post(self, *commands: PostingCommand, atomic: bool = True) -> list[Outcome]:
        return await self.engine.post(self.tenant_id, list(commands), atomic=atomic)

    async def one(self, command: PostingCommand) -> Transaction:
        (result,) = await self.post(command)
        if isinstance(result, ItemFailure):
            raise result.error
        return result

    async def balances(self, wallet_id: UUID) -> tuple[int, int, int]:
        """(balance, held_balance, version) as stored."""
        async with self.database.connection() as connection:
            row = await connection.fetchrow(
                "SELECT balance, held_balance, version FROM wallets WHERE id = $1", wallet_id
            )
        return row["balance"], row["held_balance"], row["version"]

    async def stored(self, transaction_id: UUID) -> tuple[str, int]:
        """(status, number of entries) of a transaction as stored."""
        async with self.database.connection() as connection:
            status = await connection.fetchval(
                "SELECT status FROM transactions WHERE id = $1", transaction_id
            )
            entries = await connection.fetchval(
                "SELECT count(*) FROM entries WHERE transaction_id = $1", transaction_id
            )
        return status, entries

    async def events(self, transaction_id: UUID) -> list[tuple[str, dict[str, Any]]]:
        async with self.database.connection() as connection:
            events = await published_events(connection, self.tenant_id)
        return [
            (event["type"], event["data"])
            for event in events
            if event["data"].get("transaction_id") == str(transaction_id)
        ]

    async def admin_actions(self) -> list[tuple[str, str, Any, Any]]:
        async with self.database.connection() as connection:
            rows = await connection.fetch(
                "SELECT action, target_id, before, after FROM audit_log"
                " WHERE tenant_id = $1 AND key_id = $2 ORDER BY id",
                self.tenant_id,
                self.principal.key_id,
            )
        return [(row["action"], row["target_id"], row["before"], row["after"]) for row in rows]


@pytest.fixture
async def desk(database: Database) -> Desk:
    async with database.connection() as connection:
        key = await create_api_key(connection, f"reviews-{uuid4().hex[:12]}", ["admin"])
    return Desk(database, Principal(key.key_id, key.tenant_id, frozenset(key.scopes)))


async def test_a_review_rule_holds_the_funds_and_writes_a_pending_transaction(desk: Desk) -> None:
    await desk.rules.replace(desk.principal, [BIG_DEBITS])
    wallet = await desk.wallet(funded=5_000)
    pending = await desk.one(Debit(wallet, 1_000, "EUR"))
    assert (pending.status, pending.review_rule, pending.entries) == ("pending_review", "big", ())
    assert await desk.balances(wallet) == (5_000, 1_000, 1)
    assert await desk.stored(pending.id) == ("pending_review", 0)
    ((event_type, data),) = await desk.events(pending.id)
    assert event_type == "review.created"
    assert data == {
        "tenant_id": str(desk.tenant_id),
        "wallet_id": str(wallet),
        "transaction_id": str(pending.id),
        "transaction_type": "debit",
        "status": "pending_review",
        "amount": 1_000,
        "currency": "EUR",
        "rule": "big",
        "counterparty_wallet_id": None,
    }
    with pytest.raises(InsufficientFunds):
        await desk.one(Debit(wallet, 4_001, "EUR"))
    posted = await desk.one(Debit(wallet, 999, "EUR"))
    assert posted.status == "posted"


async def test_approving_posts_the_reviewed_transfer_and_releases_the_hold(desk: Desk) -> None:
    await desk.rules.replace(desk.principal, [BIG_DEBITS])
    payer, payee = await desk.wallet(funded=5_000), await desk.wallet()
    pending = await desk.one(Transfer(payer, payee, 2_000, "EUR"))
    approved = await desk.reviews.decide(desk.principal, pending.id, "approve", "looks fine")
    assert (approved.id, approved.status, len(approved.entries)) == (pending.id, "posted", 2)
    assert [entry.amount for entry in approved.entries] == [-2_000, 2_000]
    assert await desk.balances(payer) == (3_000, 0, 2)
    assert await desk.balances(payee) == (2_000, 0, 1)
    assert await desk.stored(pending.id) == ("posted", 2)
    events = await desk.events(pending.id)
    assert [event_type for event_type, _ in events] == [
        "review.created",
        "review.approved",
        "wallet.debited",
        "wallet.credited",
    ]
    assert events[1][1]["status"] == "posted"
    assert events[2][1]["counterparty_wallet_id"] == str(payee)
    (action,) = [a for a in await desk.admin_actions() if a[0] == "review.approve"]
    assert action[1] == str(pending.id)
    assert (action[2]["status"], action[3]["status"], action[3]["reason"]) == (
        "pending_review",
        "posted",
        "looks fine",
    )


async def test_approving_counts_the_amount_against_the_daily_limit(desk: Desk) -> None:
    await desk.rules.replace(desk.principal, [BIG_DEBITS])
    wallet = await desk.wallet(funded=5_000)
    await desk.wallets.set_limits(desk.principal, wallet, Limits(daily_debit_amount=1_500))
    pending = await desk.one(Debit(wallet, 1_200, "EUR"))
    await desk.reviews.decide(desk.principal, pending.id, "approve", None)
    with pytest.raises(LimitExceeded, match=r"^daily_debit_amount: 1200 already sent today"):
        await desk.one(Debit(wallet, 301, "EUR"))
    assert (await desk.one(Debit(wallet, 300, "EUR"))).status == "posted"


async def test_approval_checks_limits_again_and_a_breach_leaves_the_review_pending(
    desk: Desk,
) -> None:
    await desk.rules.replace(desk.principal, [BIG_DEBITS])
    wallet = await desk.wallet(funded=5_000)
    await desk.wallets.set_limits(desk.principal, wallet, Limits(daily_debit_amount=1_500))
    pending = await desk.one(Debit(wallet, 1_200, "EUR"))
    assert (await desk.one(Debit(wallet, 500, "EUR"))).status == "posted"
    with pytest.raises(LimitExceeded, match=r"^daily_debit_amount: 500 already sent today"):
        await desk.reviews.decide(desk.principal, pending.id, "approve", None)
    assert await desk.stored(pending.id) == ("pending_review", 0)
    assert await desk.balances(wallet) == (4_500, 1_200, 2)


async def test_rejecting_releases_the_funds_and_posts_nothing(desk: Desk) -> None:
    await desk.rules.replace(desk.principal, [BIG_DEBITS])
    wallet = await desk.wallet(funded=5_000)
    pending = await desk.one(Debit(wallet, 1_500, "EUR"))
    rejected = await desk.reviews.decide(desk.principal, pending.id, "reject", "fraud")
    assert (rejected.status, rejected.entries) == ("rejected", ())
    assert await desk.balances(wallet) == (5_000, 0, 1)
    assert await desk.stored(pending.id) == ("rejected", 0)
    assert [event for event, _ in await desk.events(pending.id)] == [
        "review.created",
        "review.rejected",
    ]
    actions = [a[0] for a in await desk.admin_actions()]
    assert actions == ["risk_rules.replace", "review.reject"]


@pytest.mark.parametrize(
    ("first", "second"),
    [("approve", "approve"), ("approve", "reject"), ("reject", "approve"), ("reject", "reject")],
)
async def test_a_decided_review_is_not_pending_any_more(
    desk: Desk, first: Any, second: Any
) -> None:
    await desk.rules.replace(desk.principal, [BIG_DEBITS])
    wallet = await desk.wallet(funded=5_000)
    pending = await desk.one(Debit(wallet, 1_000, "EUR"))
    await desk.reviews.decide(desk.principal, pending.id, first, None)
    balances = await desk.balances(wallet)
    with pytest.raises(ReviewNotPending, match="not pending_review"):
        await desk.reviews.decide(desk.principal, pending.id, second, None)
    assert await desk.balances(wallet) == balances


async def test_a_posted_transaction_or_another_tenants_review_cannot_be_decided(
    desk: Desk, database: Database
) -> None:
    wallet = await desk.wallet(funded=5_000)
    plain = await desk.one(Debit(wallet, 10, "EUR"))
    with pytest.raises(ReviewNotPending):
        await desk.reviews.decide(desk.principal, plain.id, "approve", None)
    await desk.rules.replace(desk.principal, [BIG_DEBITS])
    pending = await desk.one(Debit(wallet, 1_000, "EUR"))
    async with database.connection() as connection:
        other = await create_api_key(connection, f"other-{uuid4().hex[:12]}", ["admin"])
    stranger = Principal(other.key_id, other.tenant_id, frozenset(other.scopes))
    with pytest.raises(NotFound):
        await desk.reviews.decide(stranger, pending.id, "approve", None)
    with pytest.raises(NotFound):
        await desk.reviews.decide(desk.principal, uuid4(), "reject", None)
    assert await desk.stored(pending.id) == ("pending_review", 0)


async def test_two_concurrent_approvals_post_the_review_exactly_once(desk: Desk) -> None:
    await desk.rules.replace(desk.principal, [BIG_DEBITS])
    wallet = await desk.wallet(funded=5_000)
    pending = await desk.one(Debit(wallet, 1_000, "EUR"))
    outcomes = await asyncio.gather(
        desk.reviews.decide(desk.principal, pending.id, "approve", None),
        desk.reviews.decide(desk.principal, pending.id, "approve", None),
        return_exceptions=True,
    )
    assert sorted(type(outcome).__name__ for outcome in outcomes) == [
        "ReviewNotPending",
        "Transaction",
    ]
    assert await desk.balances(wallet) == (4_000, 0, 2)


async def test_approval_of_a_frozen_wallet_fails_and_the_review_stays_pending(
    desk: Desk,
) -> None:
    await desk.rules.replace(desk.principal, [BIG_DEBITS])
    wallet = await desk.wallet(funded=5_000)
    pending = await desk.one(Debit(wallet, 1_000, "EUR"))
    await desk.wallets.change_status(desk.principal, wallet, "freeze", "investigating")
    with pytest.raises(WalletFrozen):
        await desk.reviews.decide(desk.principal, pending.id, "approve", None)
    assert await desk.stored(pending.id) == ("pending_review", 0)
    await desk.reviews.decide(desk.principal, pending.id, "reject", None)
    assert await desk.balances(wallet) == (5_000, 0, 1)


async def test_a_reject_rule_refuses_the_movement_and_changes_nothing(desk: Desk) -> None:
    await desk.rules.replace(
        desk.principal,
        [BIG_DEBITS, rule("huge", "amount_at_least", "reject", amount=3_000, currency="EUR")],
    )
    payer, payee = await desk.wallet(funded=5_000), await desk.wallet()
    with pytest.raises(RiskRejected) as caught:
        await desk.one(Transfer(payer, payee, 3_000, "EUR"))
    assert caught.value.detail == "risk rule 'huge' (amount_at_least) rejected this transfer"
    assert await desk.balances(payer) == (5_000, 0, 1)
    async with desk.database.connection() as connection:
        count = await connection.fetchval(
            "SELECT count(*) FROM transactions WHERE from_wallet_id = $1", payer
        )
    assert count == 0


async def test_review_time_checks_apply_before_anything_is_held(desk: Desk) -> None:
    await desk.rules.replace(desk.principal, [BIG_DEBITS])
    wallet = await desk.wallet(funded=5_000)
    await desk.wallets.set_limits(desk.principal, wallet, Limits(max_debit_amount=2_000))
    with pytest.raises(LimitExceeded, match=r"^max_debit_amount"):
        await desk.one(Debit(wallet, 2_001, "EUR"))
    with pytest.raises(InsufficientFunds):
        await desk.one(Debit(await desk.wallet(funded=999), 1_000, "EUR"))
    assert await desk.balances(wallet) == (5_000, 0, 1)


async def test_rules_do_not_apply_to_credits_or_other_currencies(desk: Desk) -> None:
    await desk.rules.replace(desk.principal, [BIG_DEBITS])
    euros = await desk.wallet()
    credit = await desk.one(Credit(euros, 50_000, "EUR"))
    dollars = await desk.wallet(funded=50_000, currency="USD")
    debit = await desk.one(Debit(dollars, 50_000, "USD"))
    assert (credit.status, debit.status) == ("posted", "posted")


async def test_young_wallet_fires_only_while_the_paying_wallet_is_young(desk: Desk) -> None:
    await desk.rules.replace(
        desk.principal, [rule("young", "young_wallet", max_age_minutes=60, amount=100)]
    )
    wallet = await desk.wallet(funded=5_000)
    assert (await desk.one(Debit(wallet, 100, "EUR"))).status == "posted"
    assert (await desk.one(Debit(wallet, 101, "EUR"))).status == "pending_review"
    async with desk.database.connection() as connection:
        await connection.execute(
            "UPDATE wallets SET created_at = created_at - interval '61 minutes' WHERE id = $1",
            wallet,
        )
    assert (await desk.one(Debit(wallet, 101, "EUR"))).status == "posted"


async def test_distinct_recipients_counts_posted_and_pending_transfers(desk: Desk) -> None:
    await desk.rules.replace(
        desk.principal, [rule("fan-out", "distinct_recipients", count=2, window_minutes=60)]
    )
    payer = await desk.wallet(funded=5_000)
    first, second, third, fourth = [await desk.wallet() for _ in range(4)]
    assert (await desk.one(Transfer(payer, first, 10, "EUR"))).status == "posted"
    assert (await desk.one(Transfer(payer, second, 10, "EUR"))).status == "posted"
    assert (await desk.one(Transfer(payer, first, 10, "EUR"))).status == "posted"
    assert (await desk.one(Debit(payer, 10, "EUR"))).status == "posted"
    assert (await desk.one(Transfer(payer, third, 10, "EUR"))).status == "pending_review"
    pending = await desk.one(Transfer(payer, fourth, 10, "EUR"))
    assert pending.status == "pending_review"
    await desk.reviews.decide(desk.principal, pending.id, "reject", None)
    assert (await desk.one(Transfer(payer, second, 10, "EUR"))).status == "pending_review"


async def test_rules_apply_to_each_item_of_a_batch(desk: Desk) -> None:
    await desk.rules.replace(
        desk.principal,
        [
            rule("fan-out", "distinct_recipients", count=1, window_minutes=60),
            rule("huge", "amount_at_least", "reject", amount=3_000, currency="EUR"),
        ],
    )
    payer = await desk.wallet(funded=10_000)
    first, second = await desk.wallet(), await desk.wallet()
    results = await desk.post(
        Transfer(payer, first, 10, "EUR"),
        Transfer(payer, second, 20, "EUR"),
        Transfer(payer, first, 3_000, "EUR"),
        atomic=False,
    )
    assert [getattr(r, "status", None) for r in results] == ["posted", "pending_review", None]
    assert isinstance(results[2], ItemFailure)
    assert isinstance(results[2].error, RiskRejected)
    assert await desk.balances(payer) == (9_990, 20, 2)
    atomic = await desk.post(Transfer(payer, first, 10, "EUR"), Transfer(payer, second, 5, "EUR"))
    assert [getattr(r, "status", None) for r in atomic] == ["pending_review", "pending_review"]
    assert await desk.balances(payer) == (9_990, 35, 2)


async def test_an_invalid_rule_set_replaces_nothing(desk: Desk) -> None:
    await desk.rules.replace(desk.principal, [BIG_DEBITS])
    bad = [
        rule("ok", "young_wallet", max_age_minutes=5, amount=1),
        rule("bad", "amount_at_least", amount=0, currency="EUR"),
    ]
    with pytest.raises(ValidationFailed, match=r"rules\[1\]\.params\.amount"):
        await desk.rules.replace(desk.principal, bad)
    assert [r.to_json() for r in await desk.rules.get(desk.tenant_id)] == [BIG_DEBITS]
    assert [a[0] for a in await desk.admin_actions()] == ["risk_rules.replace"]


async def test_replacing_rules_logs_before_and_after(desk: Desk) -> None:
    young = rule("young", "young_wallet", "reject", max_age_minutes=5, amount=1)
    await desk.rules.replace(desk.principal, [BIG_DEBITS])
    await desk.rules.replace(desk.principal, [young])
    await desk.rules.replace(desk.principal, [])
    actions = await desk.admin_actions()
    assert [(a[0], a[1]) for a in actions] == [("risk_rules.replace", str(desk.tenant_id))] * 3
    assert [(a[2], a[3]) for a in actions] == [
        ([], [BIG_DEBITS]),
        ([BIG_DEBITS], [young]),
        ([young], []),
    ]


async def test_pending_reviews_are_listed_oldest_first_in_pages(desk: Desk) -> None:
    await desk.rules.replace(desk.principal, [BIG_DEBITS])
    wallet = await desk.wallet(funded=10_000)
    created = [(await desk.one(Debit(wallet, 1_000, "EUR"))).id for _ in range(3)]
    first_page = await desk.reviews.pending(desk.tenant_id, None, 2)
    assert [tx.id for tx in first_page] == created[:2]
    last = first_page[-1]
    second_page = await desk.reviews.pending(desk.tenant_id, (last.created_at, last.id), 2)
    assert [tx.id for tx in second_page] == created[2:]
    await desk.reviews.decide(desk.principal, created[0], "approve", None)
    assert [tx.id for tx in await desk.reviews.pending(desk.tenant_id, None, 10)] == created[1:]


async def test_one_group_screens_each_tenant_with_its_own_rules(
    desk: Desk, database: Database
) -> None:
    strict = desk
    async with database.connection() as connection:
        key = await create_api_key(connection, f"reviews-{uuid4().hex[:12]}", ["admin"])
    lax = Desk(database, Principal(key.key_id, key.tenant_id, frozenset(key.scopes)))
    await strict.rules.replace(strict.principal, [BIG_DEBITS])
    payers = [await strict.wallet(funded=5_000), await lax.wallet(funded=5_000)]
    payees = [await strict.wallet(), await lax.wallet()]
    engine = Engine(database)
    # One transaction for both tenants: the lock statement reads the strict tenant's
    # rules, and the lax tenant has none.
    outcomes = await engine.post_group(
        [
            Request(owner.tenant_id, [Transfer(payer, payee, 1_000, "EUR")])
            for owner, payer, payee in zip((strict, lax), payers, payees, strict=True)
        ]
    )
    held, posted = (outcome[0] for outcome in outcomes if isinstance(outcome, list))
    assert isinstance(held, Transaction) and isinstance(posted, Transaction)
    assert (held.status, held.review_rule) == ("pending_review", "big")
    assert (posted.status, posted.review_rule) == ("posted", None)
    assert await strict.balances(payers[0]) == (5_000, 1_000, 1)
    assert await lax.balances(payers[1]) == (4_000, 0, 2)
    # Credits alone are not screened: the strict tenant's big credit is posted.
    (credit,) = await strict.post(Credit(payees[0], 2_000, "EUR"))
    assert isinstance(credit, Transaction) and credit.status == "posted"

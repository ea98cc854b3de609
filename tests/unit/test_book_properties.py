"""Properties of the book: any sequence of requests, any mix of failures, in one group.

A :class:`Book` is what one group transaction locked; requests are applied to it one
after another. For any requests (atomic or not, valid or not), hypothesis checks that a
failed atomic request leaves the book exactly as it was — wallets, outputs, holds — and
that what the book will write keeps the ledger's invariants: balances are the sum of
their entries, versions run without gaps, every currency sums to zero, no user wallet
falls below its floor, and each result is written once.
"""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import UUID

from hypothesis import given, settings
from hypothesis import strategies as st

from walletd.domain.book import Book, Captured, ItemFailure
from walletd.domain.commands import (
    CaptureHold,
    Command,
    Credit,
    Debit,
    PlaceHold,
    Transfer,
    VoidHold,
)
from walletd.domain.ledger import WalletState, WalletStatus
from walletd.domain.records import Hold, Transaction
from walletd.domain.risk import RiskScreen

TENANT = UUID(int=1)
SYSTEM = UUID(int=10)
USERS = [UUID(int=11), UUID(int=12), UUID(int=13)]
NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


def wallet(wallet_id: UUID, *, is_system: bool = False, overdraft: int = 0) -> WalletState:
    return WalletState(
        wallet_id,
        TENANT,
        "EUR",
        is_system,
        WalletStatus.ACTIVE,
        0,
        0,
        overdraft,
        0,
        bytes(32),
        NOW,
        NOW,
    )


def new_book() -> Book:
    wallets = {SYSTEM: wallet(SYSTEM, is_system=True)}
    for index, user in enumerate(USERS):
        wallets[user] = wallet(user, overdraft=50 * index)
    return Book(
        wallets,
        NOW,
        screens={TENANT: RiskScreen(TENANT)},
        system_wallets={(TENANT, "EUR"): SYSTEM},
    )


amounts = st.one_of(st.integers(1, 300), st.just(2**63 - 1))
users = st.sampled_from(USERS)
command = st.one_of(
    st.builds(Credit, users, amounts, st.just("EUR")),
    st.builds(Debit, users, amounts, st.just("EUR")),
    st.builds(Transfer, users, users, amounts, st.sampled_from(["EUR", "EUR", "USD"])),
    st.builds(PlaceHold, users, amounts, st.just("EUR")),
    st.builds(CaptureHold, st.integers(0, 5), st.none() | st.integers(1, 200), st.none() | users),
    st.builds(VoidHold, st.integers(0, 5)),
)
request = st.tuples(st.booleans(), st.lists(command, min_size=1, max_size=5))


def resolve(book: Book, commands: list[Command]) -> list[Command]:
    """Hold commands name the n-th hold placed so far (or one that does not exist)."""
    placed = [hold.id for hold in book.new_holds]
    resolved: list[Command] = []
    for item in commands:
        if isinstance(item, CaptureHold | VoidHold):
            position = int(item.hold_id)  # type: ignore[call-overload]
            hold_id = placed[position] if position < len(placed) else UUID(int=999)
            item = (
                CaptureHold(hold_id, item.amount, item.to_wallet_id)
                if isinstance(item, CaptureHold)
                else VoidHold(hold_id)
            )
        resolved.append(item)
    return resolved


def picture(book: Book) -> tuple[object, ...]:
    """Everything a cancelled request must leave as it was."""
    return (
        {wallet_id: state.snapshot() for wallet_id, state in book.wallets.items()},
        dict(book.holds),
        [len(items) for items in book._outputs()],
    )


@settings(max_examples=300, deadline=None)
@given(st.lists(request, min_size=1, max_size=12))
def test_any_requests_in_one_group_keep_every_invariant(
    requests: list[tuple[bool, list[Command]]],
) -> None:
    book = new_book()
    results: list[Transaction | Hold | Captured] = []
    for atomic, raw in requests:
        for hold in book.new_holds:  # holds placed earlier in the group can be used
            book.holds.setdefault(hold.id, hold)
        commands = resolve(book, raw)
        before = picture(book)
        outcomes = book.apply_request(TENANT, commands, atomic=atomic)
        failures = [o for o in outcomes if isinstance(o, ItemFailure)]
        if atomic and failures:
            assert len(outcomes) == 1
            assert picture(book) == before, "a failed atomic request changed the book"
        else:
            assert len(outcomes) == len(commands)
        results.extend(o for o in outcomes if not isinstance(o, ItemFailure))
    check_invariants(book, results)


def check_invariants(book: Book, results: list[Transaction | Hold | Captured]) -> None:
    entries = [entry for tx in book.transactions for entry in tx.entries]
    assert sum(entry.amount for entry in entries) == 0
    for wallet_id, state in book.wallets.items():
        mine = [entry for entry in entries if entry.wallet_id == wallet_id]
        assert [entry.wallet_version for entry in mine] == list(range(1, len(mine) + 1))
        assert state.balance == sum(entry.amount for entry in mine)
        assert state.version == len(mine)
        if not state.is_system:
            assert state.available_balance >= -state.overdraft_limit
            assert state.held_balance >= 0
    pending = sum(hold.amount for hold in book.holds.values() if hold.status == "pending")
    fresh = [hold for hold in book.new_holds if hold.id not in book.holds]
    pending += sum(hold.amount for hold in fresh)
    assert sum(state.held_balance for state in book.wallets.values()) == pending
    posted = [r for r in results if isinstance(r, Transaction)]
    posted += [r.transaction for r in results if isinstance(r, Captured)]
    assert sorted(tx.id for tx in posted) == sorted(tx.id for tx in book.transactions)
    finished = [hold.id for hold in book.finished_holds]
    assert len(finished) == len(set(finished)), "a hold finished twice"

"""Hold rules of the pure domain: holds, captures, voids and expiries against the floor.

In-memory :class:`WalletState`s only (no I/O): hypothesis runs any sequence of
credits, debits, transfers, holds, captures, voids, expiries and freezes through the
domain functions the service layer uses, and checks the ledger invariants after
every step; a rejected step must leave every wallet exactly as it was.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from walletd.domain.hashing import GENESIS_HASH
from walletd.domain.ledger import (
    Entry,
    Limits,
    Movement,
    WalletState,
    WalletStatus,
    place_hold,
    post_movement,
    release_hold,
)
from walletd.errors import (
    CurrencyMismatch,
    InsufficientFunds,
    LimitExceeded,
    ValidationFailed,
    WalletdError,
    WalletFrozen,
)

START = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
TENANT = uuid4()


def wallet(
    *, overdraft_limit: int = 0, is_system: bool = False, limits: Limits | None = None
) -> WalletState:
    return WalletState(
        id=uuid4(),
        tenant_id=TENANT,
        currency="EUR",
        is_system=is_system,
        status=WalletStatus.ACTIVE,
        balance=0,
        held_balance=0,
        overdraft_limit=overdraft_limit,
        version=0,
        last_hash=GENESIS_HASH,
        created_at=START,
        updated_at=START,
        limits=limits or Limits(),
    )


@dataclass
class Ledger:
    """Wallets, their entries and the pending holds, as the service layer keeps them."""

    system: WalletState
    users: list[WalletState]
    entries: list[Entry] = field(default_factory=list)
    pending: list[tuple[UUID, int]] = field(default_factory=list)  # (wallet id, amount)
    clock: datetime = START

    @property
    def states(self) -> dict[UUID, WalletState]:
        return {state.id: state for state in [self.system, *self.users]}

    def tick(self) -> datetime:
        self.clock += timedelta(seconds=1)
        return self.clock

    def move(
        self,
        kind: str,
        source: WalletState,
        destination: WalletState,
        amount: int,
        release_held: int = 0,
    ) -> None:
        movement = Movement(kind, source.id, destination.id, amount, "EUR", release_held)  # type: ignore[arg-type]
        self.entries += post_movement(self.states, movement, uuid4(), self.tick())


def new_ledger() -> Ledger:
    capped = Limits(max_debit_amount=400)
    users = [wallet(), wallet(overdraft_limit=150), wallet(limits=capped)]
    return Ledger(system=wallet(is_system=True), users=users)


Operation = tuple[str, int, int, int]  # (kind, wallet index, other index, amount)

operations = st.tuples(
    st.sampled_from(
        [
            "credit",
            "debit",
            "transfer",
            "hold",
            "capture",
            "capture_to",
            "void",
            "expire",
            "freeze",
            "unfreeze",
        ]
    ),
    st.integers(0, 2),
    st.integers(0, 2),
    st.integers(1, 600),
)


def apply(ledger: Ledger, operation: Operation) -> None:
    """Run one operation the way the service layer would; raises like it does."""
    kind, index, other, amount = operation
    user, peer = ledger.users[index], ledger.users[other]
    if kind == "credit":
        ledger.move("credit", ledger.system, user, amount)
    elif kind == "debit":
        ledger.move("debit", user, ledger.system, amount)
    elif kind == "transfer":
        ledger.move("transfer", user, peer, amount)
    elif kind == "hold":
        place_hold(user, amount, "EUR", ledger.tick())
        ledger.pending.append((user.id, amount))
    elif kind in ("capture", "capture_to") and ledger.pending:
        capture(ledger, index, amount, peer if kind == "capture_to" else ledger.system)
    elif kind in ("void", "expire") and ledger.pending:
        wallet_id, held = ledger.pending.pop(index % len(ledger.pending))
        release_hold(ledger.states[wallet_id], held, ledger.tick())
    elif kind in ("freeze", "unfreeze"):
        user.status = WalletStatus.FROZEN if kind == "freeze" else WalletStatus.ACTIVE


def capture(ledger: Ledger, index: int, amount: int, destination: WalletState) -> None:
    """Capture ``amount`` (at most the hold) of a pending hold; the rest is released."""
    position = index % len(ledger.pending)
    wallet_id, held = ledger.pending[position]
    if amount > held:
        raise ValidationFailed(f"capture amount {amount} is above the held {held}")
    ledger.move("capture", ledger.states[wallet_id], destination, amount, release_held=held)
    ledger.pending.pop(position)


def check_invariants(ledger: Ledger) -> None:
    for user in ledger.users:
        assert user.available_balance >= -user.overdraft_limit, user
        held = sum(amount for wallet_id, amount in ledger.pending if wallet_id == user.id)
        assert user.held_balance == held
    assert ledger.system.held_balance == 0
    assert sum(state.balance for state in ledger.states.values()) == 0
    for state in ledger.states.values():
        own = [entry for entry in ledger.entries if entry.wallet_id == state.id]
        assert [entry.wallet_version for entry in own] == list(range(1, len(own) + 1))
        running = 0
        for entry in own:
            running += entry.amount
            assert entry.balance_after == running
        assert state.balance == running
        assert state.version == len(own)


@settings(max_examples=300, deadline=None)
@given(st.lists(operations, max_size=40))
def test_any_sequence_of_hold_operations_keeps_the_floor_and_the_invariants(
    sequence: list[Operation],
) -> None:
    ledger = new_ledger()
    for operation in sequence:
        before = (copy.deepcopy(ledger.states), list(ledger.pending), len(ledger.entries))
        try:
            apply(ledger, operation)
        except WalletdError:
            assert (ledger.states, ledger.pending, len(ledger.entries)) == before
        check_invariants(ledger)


def test_a_hold_lowers_available_balance_but_not_balance_and_writes_no_entry() -> None:
    ledger = new_ledger()
    user = ledger.users[0]
    ledger.move("credit", ledger.system, user, 1000)
    place_hold(user, 300, "EUR", ledger.tick())
    assert (user.balance, user.held_balance, user.available_balance) == (1000, 300, 700)
    assert user.version == 1


def test_a_hold_may_use_the_overdraft_but_not_go_beyond_it() -> None:
    ledger = new_ledger()
    user = ledger.users[1]  # overdraft 150
    place_hold(user, 150, "EUR", ledger.tick())
    assert user.available_balance == -150
    with pytest.raises(InsufficientFunds):
        place_hold(user, 1, "EUR", ledger.tick())
    assert user.held_balance == 150


def test_a_debit_cannot_spend_what_a_hold_reserved() -> None:
    ledger = new_ledger()
    user = ledger.users[0]
    ledger.move("credit", ledger.system, user, 500)
    place_hold(user, 400, "EUR", ledger.tick())
    with pytest.raises(InsufficientFunds):
        ledger.move("debit", user, ledger.system, 101)
    ledger.move("debit", user, ledger.system, 100)
    assert (user.balance, user.held_balance, user.available_balance) == (400, 400, 0)


def test_a_partial_capture_posts_the_amount_and_releases_the_rest() -> None:
    ledger = new_ledger()
    user, payee = ledger.users[0], ledger.users[1]
    ledger.move("credit", ledger.system, user, 1000)
    place_hold(user, 600, "EUR", ledger.tick())
    ledger.pending.append((user.id, 600))
    capture(ledger, 0, 250, payee)
    assert (user.balance, user.held_balance, user.available_balance) == (750, 0, 750)
    assert payee.balance == 250
    assert ledger.pending == []


def test_a_capture_counts_against_the_daily_limit_of_the_paying_wallet() -> None:
    ledger = new_ledger()
    user = ledger.users[0]
    user.limits = Limits(daily_debit_amount=300)
    ledger.move("credit", ledger.system, user, 1000)
    place_hold(user, 500, "EUR", ledger.tick())
    ledger.pending.append((user.id, 500))
    with pytest.raises(LimitExceeded, match="daily_debit_amount"):
        capture(ledger, 0, 301, ledger.system)
    capture(ledger, 0, 300, ledger.system)
    assert user.debit_day_total == 300


def test_holds_obey_max_debit_amount_status_and_currency() -> None:
    ledger = new_ledger()
    capped, frozen = ledger.users[2], ledger.users[1]
    ledger.move("credit", ledger.system, capped, 1000)
    with pytest.raises(LimitExceeded, match="max_debit_amount"):
        place_hold(capped, 401, "EUR", ledger.tick())
    with pytest.raises(CurrencyMismatch):
        place_hold(capped, 10, "USD", ledger.tick())
    frozen.status = WalletStatus.FROZEN
    with pytest.raises(WalletFrozen):
        place_hold(frozen, 10, "EUR", ledger.tick())
    assert (capped.held_balance, frozen.held_balance) == (0, 0)

"""Properties of the pure posting rules: for any sequence of operations, the ledger holds.

A hypothesis state machine drives :func:`walletd.domain.ledger.post_movement`,
:func:`place_hold` and :func:`release_hold` over in-memory wallets (random overdrafts,
statuses and limits; a system wallet per currency is the outside party, as in
``service_layer/posting.py``). After every step, invariants 1 to 5 and 7 of SPEC.md
section 6 hold; an operation is rejected exactly when an independent model says a rule
is broken, and a rejected operation leaves every wallet exactly as it was.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from walletd.domain.hashing import GENESIS_HASH, canonical_entry, chain_hash
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
from walletd.domain.money import MAX_AMOUNT, MAX_BALANCE, MIN_BALANCE
from walletd.errors import (
    CurrencyMismatch,
    InsufficientFunds,
    LimitExceeded,
    SameWallet,
    ValidationFailed,
    WalletClosed,
    WalletdError,
    WalletFrozen,
)

START = datetime(2026, 11, 24, 23, 58, tzinfo=UTC)
USER_CURRENCIES = ("EUR", "EUR", "EUR", "USD")
CURRENCIES = ("EUR", "USD")

# Mostly everyday amounts; one in twenty is huge, to reach the bigint edges.
amounts = st.integers(min_value=0, max_value=19).flatmap(
    lambda pick: (
        st.sampled_from([MAX_AMOUNT, MAX_AMOUNT // 2 + 1])
        if pick == 0
        else st.integers(min_value=1, max_value=3_000)
    )
)
optional_limits = st.one_of(st.none(), st.integers(min_value=1, max_value=5_000))
wallet_indexes = st.integers(min_value=0, max_value=len(USER_CURRENCIES) - 1)
statuses = st.sampled_from([WalletStatus.ACTIVE] * 8 + [WalletStatus.FROZEN, WalletStatus.CLOSED])
# The wallet's own currency five times in six; else the other one (a mismatch).
other_currency = st.integers(min_value=0, max_value=5).map(lambda pick: pick == 0)


@dataclass(slots=True)
class DebitModel:
    """What the rules should count against limits, kept apart from the code under test."""

    day: object = None
    day_total: int = 0
    last_minute: int = 0


@dataclass(slots=True)
class PendingHold:
    wallet_id: UUID
    amount: int
    id: UUID = field(default_factory=uuid4)


def new_wallet(
    tenant_id: UUID, currency: str, *, is_system: bool = False, **overrides: object
) -> WalletState:
    wallet = WalletState(
        id=uuid4(),
        tenant_id=tenant_id,
        currency=currency,
        is_system=is_system,
        status=WalletStatus.ACTIVE,
        balance=0,
        held_balance=0,
        overdraft_limit=0,
        version=0,
        last_hash=GENESIS_HASH,
        created_at=START,
        updated_at=START,
    )
    for name, value in overrides.items():
        setattr(wallet, name, value)
    return wallet


def broken_payment_rules(wallet: WalletState, amount: int, currency: str) -> set[type]:
    broken: set[type] = set()
    if wallet.status is WalletStatus.CLOSED:
        broken.add(WalletClosed)
    if wallet.status is WalletStatus.FROZEN:
        broken.add(WalletFrozen)
    if wallet.currency != currency:
        broken.add(CurrencyMismatch)
    limit = wallet.limits.max_debit_amount
    if not wallet.is_system and limit is not None and amount > limit:
        broken.add(LimitExceeded)
    return broken


def attempt(operation: Callable[[], object]) -> WalletdError | None:
    """Run ``operation``; the walletd error it raised, if any."""
    try:
        operation()
    except WalletdError as error:
        return error
    return None


class LedgerMachine(RuleBasedStateMachine):
    """Wallets of one tenant; ``entries`` keeps every entry each wallet was given."""

    def __init__(self) -> None:
        super().__init__()
        self.tenant_id = uuid4()
        self.now = START
        self.wallets: dict[UUID, WalletState] = {}
        self.users: list[UUID] = []
        self.system: dict[str, UUID] = {}
        self.entries: dict[UUID, list[Entry]] = {}
        self.debits: dict[UUID, DebitModel] = {}
        self.holds: list[PendingHold] = []

    @initialize(
        overdrafts=st.lists(st.integers(0, 1_000), min_size=4, max_size=4),
        wallet_statuses=st.lists(statuses, min_size=4, max_size=4),
        max_debits=st.lists(optional_limits, min_size=4, max_size=4),
        daily=st.lists(optional_limits, min_size=4, max_size=4),
        per_minute=st.lists(st.one_of(st.none(), st.integers(1, 3)), min_size=4, max_size=4),
    )
    def open_wallets(
        self,
        overdrafts: list[int],
        wallet_statuses: list[WalletStatus],
        max_debits: list[int | None],
        daily: list[int | None],
        per_minute: list[int | None],
    ) -> None:
        for currency in CURRENCIES:
            system = new_wallet(self.tenant_id, currency, is_system=True)
            self.system[currency] = system.id
            self.wallets[system.id] = system
        for index, currency in enumerate(USER_CURRENCIES):
            limits = Limits(max_debits[index], daily[index], per_minute[index])
            wallet = new_wallet(
                self.tenant_id,
                currency,
                overdraft_limit=overdrafts[index],
                status=wallet_statuses[index],
                limits=limits,
            )
            self.wallets[wallet.id] = wallet
            self.users.append(wallet.id)
            self.debits[wallet.id] = DebitModel()
        self.entries = {wallet_id: [] for wallet_id in self.wallets}

    # ------------------------------------------------------------------ the oracle

    def broken_movement_rules(self, movement: Movement) -> set[type]:
        """Every rule ``movement`` breaks, computed independently of the code under test."""
        source = self.wallets[movement.source_id]
        destination = self.wallets[movement.destination_id]
        if source.id == destination.id:
            return {SameWallet}
        broken = broken_payment_rules(source, movement.amount, movement.currency)
        if destination.status is WalletStatus.CLOSED:
            broken.add(WalletClosed)
        if destination.currency != movement.currency:
            broken.add(CurrencyMismatch)
        if not source.is_system and movement.type in ("debit", "transfer", "capture"):
            model, limits = self.debits[source.id], source.limits
            spent = model.day_total if model.day == self.now.date() else 0
            if spent + movement.amount > MAX_BALANCE:  # the stored daily total is a bigint
                broken.add(ValidationFailed)
            if limits.daily_debit_amount is not None and (
                spent + movement.amount > limits.daily_debit_amount
            ):
                broken.add(LimitExceeded)
            if limits.max_debits_per_minute is not None and (
                model.last_minute >= limits.max_debits_per_minute
            ):
                broken.add(LimitExceeded)
        available = source.balance - source.held_balance + movement.release_held
        if not source.is_system and available - movement.amount < -source.overdraft_limit:
            broken.add(InsufficientFunds)
        if source.balance - movement.amount < MIN_BALANCE or (
            destination.balance + movement.amount > MAX_BALANCE
        ):
            broken.add(ValidationFailed)
        return broken

    def snapshot(self) -> dict[UUID, WalletState]:
        return {wallet_id: copy.copy(wallet) for wallet_id, wallet in self.wallets.items()}

    def accepted_as_expected(
        self, error: WalletdError | None, broken: set[type], before: dict[UUID, WalletState]
    ) -> bool:
        """Rejected only for a rule the oracle saw broken, and then nothing changed."""
        if error is None:
            assert broken == set(), broken
            return True
        assert type(error) in broken, (type(error), broken)
        assert self.wallets == before
        return False

    def post(self, movement: Movement) -> bool:
        """Post ``movement``; check it was accepted or rejected as the oracle says."""
        broken = self.broken_movement_rules(movement)
        before = self.snapshot()
        transaction_id = uuid4()
        entries: list[Entry] = []
        error = attempt(
            lambda: entries.extend(post_movement(self.wallets, movement, transaction_id, self.now))
        )
        if not self.accepted_as_expected(error, broken, before):
            return False
        assert [entry.amount for entry in entries] == [-movement.amount, movement.amount]
        assert sum(entry.amount for entry in entries) == 0
        assert {entry.transaction_id for entry in entries} == {transaction_id}
        for entry in entries:
            self.entries[entry.wallet_id].append(entry)
        source = self.wallets[movement.source_id]
        if not source.is_system and movement.type in ("debit", "transfer", "capture"):
            model = self.debits[source.id]
            if model.day != self.now.date():
                model.day, model.day_total = self.now.date(), 0
            model.day_total += movement.amount
            model.last_minute += 1
        return True

    # ------------------------------------------------------------------ operations

    def currency_for(self, index: int, mismatch: bool) -> str:
        own = USER_CURRENCIES[index]
        return next(code for code in CURRENCIES if code != own) if mismatch else own

    @rule(index=wallet_indexes, amount=amounts, mismatch=other_currency)
    def credit(self, index: int, amount: int, mismatch: bool) -> None:
        currency = self.currency_for(index, mismatch)
        self.post(Movement("credit", self.system[currency], self.users[index], amount, currency))

    @rule(index=wallet_indexes, amount=amounts, mismatch=other_currency)
    def debit(self, index: int, amount: int, mismatch: bool) -> None:
        currency = self.currency_for(index, mismatch)
        self.post(Movement("debit", self.users[index], self.system[currency], amount, currency))

    @rule(source=wallet_indexes, destination=wallet_indexes, amount=amounts)
    def transfer(self, source: int, destination: int, amount: int) -> None:
        currency = USER_CURRENCIES[source]
        self.post(
            Movement("transfer", self.users[source], self.users[destination], amount, currency)
        )

    @rule(index=wallet_indexes, amount=amounts, mismatch=other_currency)
    def hold(self, index: int, amount: int, mismatch: bool) -> None:
        currency = self.currency_for(index, mismatch)
        wallet = self.wallets[self.users[index]]
        broken = broken_payment_rules(wallet, amount, currency)
        if wallet.available_balance - amount < -wallet.overdraft_limit:
            broken.add(InsufficientFunds)
        if wallet.held_balance + amount > MAX_BALANCE:
            broken.add(ValidationFailed)
        before = self.snapshot()
        error = attempt(lambda: place_hold(wallet, amount, currency, self.now))
        if self.accepted_as_expected(error, broken, before):
            self.holds.append(PendingHold(wallet.id, amount))

    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        if not self.holds:
            return
        pending = self.holds.pop(data.draw(st.integers(0, len(self.holds) - 1)))
        wallet = self.wallets[pending.wallet_id]
        held_before = wallet.held_balance
        release_hold(wallet, pending.amount, self.now)
        assert wallet.held_balance == held_before - pending.amount

    @rule(data=st.data())
    def capture(self, data: st.DataObject) -> None:
        """A hold captured (all or part) to the outside: the whole hold is released."""
        if not self.holds:
            return
        position = data.draw(st.integers(0, len(self.holds) - 1))
        pending = self.holds[position]
        wallet = self.wallets[pending.wallet_id]
        amount = data.draw(st.integers(1, pending.amount))
        movement = Movement(
            "capture",
            wallet.id,
            self.system[wallet.currency],
            amount,
            wallet.currency,
            release_held=pending.amount,
        )
        if self.post(movement):
            self.holds.pop(position)

    @rule(minutes=st.sampled_from([1, 2, 60 * 24]))
    def time_passes(self, minutes: int) -> None:
        """The clock moves on; the service recounts the last minute's debits (none now)."""
        self.now += timedelta(minutes=minutes)
        for wallet_id in self.users:
            self.wallets[wallet_id].debits_last_minute = 0
            self.debits[wallet_id].last_minute = 0

    # ------------------------------------------------------------------ invariants

    @invariant()
    def chains_are_gapless_and_balances_run(self) -> None:
        """Invariants 2 and 3."""
        for wallet_id, entries in self.entries.items():
            balance = 0
            for version, entry in enumerate(entries, start=1):
                assert entry.wallet_version == version
                assert entry.balance_after == balance + entry.amount
                balance = entry.balance_after
            wallet = self.wallets[wallet_id]
            assert wallet.balance == balance
            assert wallet.version == len(entries)

    @invariant()
    def user_wallets_stay_above_their_floor(self) -> None:
        """Invariant 4, and ``held_balance`` is exactly the pending holds."""
        for wallet_id in self.users:
            wallet = self.wallets[wallet_id]
            assert wallet.available_balance >= -wallet.overdraft_limit
            held = sum(hold.amount for hold in self.holds if hold.wallet_id == wallet_id)
            assert wallet.held_balance == held

    @invariant()
    def each_currency_sums_to_zero(self) -> None:
        """Invariant 5 (invariant 1 is checked on every posting in :meth:`post`)."""
        for currency in CURRENCIES:
            total = sum(w.balance for w in self.wallets.values() if w.currency == currency)
            assert total == 0

    @invariant()
    def hash_chains_verify(self) -> None:
        """Invariant 7: recomputed from the entries' fields, from the genesis hash."""
        for wallet_id, entries in self.entries.items():
            previous = GENESIS_HASH
            for entry in entries:
                canonical = canonical_entry(
                    entry_id=entry.id,
                    transaction_id=entry.transaction_id,
                    wallet_id=entry.wallet_id,
                    currency=entry.currency,
                    amount=entry.amount,
                    balance_after=entry.balance_after,
                    wallet_version=entry.wallet_version,
                    created_at=entry.created_at,
                )
                previous = chain_hash(previous, canonical)
                assert entry.hash == previous
            assert self.wallets[wallet_id].last_hash == previous


LedgerMachine.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestAnySequenceOfOperationsKeepsEveryInvariant = LedgerMachine.TestCase

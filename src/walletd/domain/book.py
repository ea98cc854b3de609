"""The book of one group: what the engine locked, every command applied to it, what to write.

The engine (:mod:`walletd.service_layer.engine`) locks the wallets, holds and referenced
transactions a group of requests names, puts them in a :class:`Book`, and calls
:meth:`Book.apply_request` for each request in turn. Everything here is pure: each
command checks every rule before it changes anything, runs inside an undo frame, and a
failed command (or, for an atomic request, a failed request) leaves the book exactly as
it was, so its neighbours in the group get their exact answers. What the book
accumulates — new and decided transactions, holds, wallet states, outbox events, admin
log rows — is written by one named set of statements in one database transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any
from uuid import UUID

from walletd.domain.commands import (
    CaptureHold,
    Command,
    Credit,
    Debit,
    DecideReview,
    ExpireHold,
    PlaceHold,
    Reverse,
    Transfer,
    VoidHold,
)
from walletd.domain.events import OutboxEvent, posting_event
from walletd.domain.holds import hold_event, is_due
from walletd.domain.ledger import (
    Movement,
    WalletState,
    hold_for_review,
    place_hold,
    post_movement,
    release_hold,
)
from walletd.domain.records import Hold, Transaction
from walletd.domain.risk import RiskScreen, review_event
from walletd.errors import (
    AlreadyReversed,
    HoldNotPending,
    InsufficientFunds,
    NotFound,
    ReviewNotPending,
    ValidationFailed,
    WalletdError,
)
from walletd.ids import new_id


@dataclass(frozen=True, slots=True)
class Captured:
    """A captured hold and the transaction of its capture (posted, or pending review)."""

    hold: Hold
    transaction: Transaction


Result = Transaction | Hold | Captured


@dataclass(frozen=True, slots=True)
class ItemFailure:
    """Command ``index`` of a request failed with ``error``; it changed nothing."""

    index: int
    error: WalletdError


Outcome = Result | ItemFailure


@dataclass(frozen=True, slots=True)
class AdminAction:
    """One row of the admin audit log, written with the change it describes."""

    tenant_id: UUID
    key_id: UUID | None
    action: str
    target_type: str
    target_id: str
    before: Any
    after: Any


@dataclass(slots=True)
class _Frame:
    """What to restore when the commands since this frame began are cancelled."""

    wallets: dict[UUID, WalletState] = field(default_factory=dict)
    holds: dict[UUID, Hold] = field(default_factory=dict)
    referenced: dict[UUID, Transaction] = field(default_factory=dict)
    reversed: set[UUID] = field(default_factory=set)
    lengths: tuple[int, ...] = ()
    screens: dict[UUID, int] = field(default_factory=dict)


@dataclass(slots=True)
class Book:
    """The locked state of one group and everything its commands produce."""

    wallets: dict[UUID, WalletState]
    at: datetime
    holds: dict[UUID, Hold] = field(default_factory=dict)
    # Transactions named by a reversal or a review decision, read under the wallet locks.
    referenced: dict[UUID, Transaction] = field(default_factory=dict)
    reversed: dict[UUID, UUID] = field(default_factory=dict)  # referenced → its reversal
    screens: dict[UUID, RiskScreen] = field(default_factory=dict)
    system_wallets: dict[tuple[UUID, str], UUID] = field(default_factory=dict)
    # What to write, in order.
    transactions: list[Transaction] = field(default_factory=list)
    decided: list[Transaction] = field(default_factory=list)
    new_holds: list[Hold] = field(default_factory=list)
    finished_holds: list[Hold] = field(default_factory=list)
    events: list[tuple[UUID, OutboxEvent]] = field(default_factory=list)
    actions: list[AdminAction] = field(default_factory=list)
    touched: list[UUID] = field(default_factory=list)
    _frames: list[_Frame] = field(default_factory=list)
    _system_ids_cache: frozenset[UUID] | None = None
    _expired_at_open: set[UUID] = field(default_factory=set)

    # ----- requests and undo frames ------------------------------------------------

    def apply_request(
        self, tenant_id: UUID, commands: Sequence[Command], *, atomic: bool
    ) -> list[Outcome]:
        """Apply ``commands`` in order; ``atomic``: the first failure cancels them all.

        An atomic request runs in one undo frame (a failed command cancels the whole
        request, so it needs no frame of its own); otherwise each command has its own.
        """
        if atomic and len(commands) > 1:
            return self._apply_atomic(tenant_id, commands)
        outcomes: list[Outcome] = []
        for index, command in enumerate(commands):
            self._begin()
            try:
                result = self._apply(tenant_id, command)
            except WalletdError as error:
                self._cancel()
                outcomes.append(ItemFailure(index, error))
                continue
            self._keep()
            outcomes.append(result)
        return outcomes

    def _apply_atomic(self, tenant_id: UUID, commands: Sequence[Command]) -> list[Outcome]:
        self._begin()
        outcomes: list[Outcome] = []
        for index, command in enumerate(commands):
            try:
                outcomes.append(self._apply(tenant_id, command))
            except WalletdError as error:
                self._cancel()
                return [ItemFailure(index, error)]
        self._keep()
        return outcomes

    def _outputs(self) -> tuple[list[Any], ...]:
        return (
            self.transactions,
            self.decided,
            self.new_holds,
            self.finished_holds,
            self.events,
            self.actions,
            self.touched,
        )

    def _begin(self) -> None:
        lengths = tuple(len(items) for items in self._outputs())
        marks = {tenant: screen.checkpoint() for tenant, screen in self.screens.items()}
        self._frames.append(_Frame(lengths=lengths, screens=marks))

    def _keep(self) -> None:
        """Fold the innermost frame into its parent (what it saved stays restorable)."""
        frame = self._frames.pop()
        if not self._frames:
            return
        parent = self._frames[-1]
        # The parent keeps its own (older) copy where it has one.
        parent.wallets = {**frame.wallets, **parent.wallets}
        parent.holds = {**frame.holds, **parent.holds}
        parent.referenced = {**frame.referenced, **parent.referenced}
        parent.reversed |= frame.reversed

    def _cancel(self) -> None:
        frame = self._frames.pop()
        self.wallets.update(frame.wallets)
        self.holds.update(frame.holds)
        self.referenced.update(frame.referenced)
        for original_id in frame.reversed:
            del self.reversed[original_id]
        for items, length in zip(self._outputs(), frame.lengths, strict=True):
            del items[length:]
        for tenant, mark in frame.screens.items():
            self.screens[tenant].restore(mark)

    def _wallets_for_change(self, *wallet_ids: UUID) -> dict[UUID, WalletState]:
        """Save the wallets before a change (once per frame) and mark them written."""
        frame = self._frames[-1] if self._frames else None
        for wallet_id in wallet_ids:
            if frame is not None and wallet_id not in frame.wallets:
                frame.wallets[wallet_id] = self.wallets[wallet_id].snapshot()
            self.touched.append(wallet_id)
        return self.wallets

    def _set_hold(self, hold: Hold) -> None:
        if self._frames and hold.id not in self._frames[-1].holds:
            self._frames[-1].holds[hold.id] = self.holds[hold.id]
        self.holds[hold.id] = hold
        self.finished_holds.append(hold)

    def _set_referenced(self, transaction: Transaction) -> None:
        frame = self._frames[-1] if self._frames else None
        if frame is not None and transaction.id not in frame.referenced:
            frame.referenced[transaction.id] = self.referenced[transaction.id]
        self.referenced[transaction.id] = transaction

    def _emit(self, tenant_id: UUID, events: Sequence[OutboxEvent]) -> None:
        self.events.extend((tenant_id, event) for event in events)

    def _system_ids(self) -> frozenset[UUID]:
        if self._system_ids_cache is None:
            self._system_ids_cache = frozenset(
                state.id for state in self.wallets.values() if state.is_system
            )
        return self._system_ids_cache

    # ----- lookups ---------------------------------------------------------------

    def user_wallet(self, tenant_id: UUID, wallet_id: UUID) -> WalletState:
        """A locked user wallet of the tenant; anything else does not exist for it."""
        state = self.wallets.get(wallet_id)
        if state is None or state.tenant_id != tenant_id or state.is_system:
            raise NotFound(f"wallet {wallet_id} not found")
        return state

    def system_wallet(self, tenant_id: UUID, currency: str) -> UUID:
        wallet_id = self.system_wallets[(tenant_id, currency)]
        assert wallet_id in self.wallets, f"system wallet {wallet_id} was not locked"
        return wallet_id

    def pending_hold(self, tenant_id: UUID, hold_id: UUID) -> Hold:
        hold = self.holds.get(hold_id)
        if hold is None or hold.tenant_id != tenant_id:
            raise NotFound(f"hold {hold_id} not found")
        if hold.status != "pending":
            raise HoldNotPending(f"hold {hold_id} is {hold.status}")
        return hold

    def referenced_transaction(self, tenant_id: UUID, transaction_id: UUID) -> Transaction:
        found = self.referenced.get(transaction_id)
        if found is None or found.tenant_id != tenant_id:
            raise NotFound(f"transaction {transaction_id} not found")
        return found

    # ----- the commands ----------------------------------------------------------

    def _apply(self, tenant_id: UUID, command: Command) -> Result:
        match command:
            case Credit() | Debit() | Transfer():
                return self._post(tenant_id, command)
            case PlaceHold():
                return self._place_hold(tenant_id, command)
            case CaptureHold():
                return self._capture(tenant_id, command)
            case VoidHold():
                return self._finish(self.pending_hold(tenant_id, command.hold_id), "voided")
            case ExpireHold():
                return self._expire_command(tenant_id, command)
            case Reverse():
                return self._reverse(tenant_id, command)
            case DecideReview():
                return self._decide(tenant_id, command)

    def _screened_movement(
        self,
        tenant_id: UUID,
        movement: Movement,
        recipient_id: UUID | None,
        transaction_id: UUID,
    ) -> tuple[str | None, tuple[Any, ...]]:
        """Screen a payment and apply it: posted (its entries) or held for review (no entry)."""
        wallets = self._wallets_for_change(movement.source_id, movement.destination_id)
        payer = wallets[movement.source_id]
        screen = self.screens[tenant_id]
        rule = screen.check(payer, recipient_id, movement.amount, movement.currency, self.at)
        if rule is None:
            entries: tuple[Any, ...] = tuple(
                post_movement(wallets, movement, transaction_id, self.at)
            )
        else:
            hold_for_review(wallets, movement, self.at)
            entries = ()
        screen.record(payer.id, recipient_id, self.at)
        return rule, entries

    def _movement(
        self, tenant_id: UUID, command: Credit | Debit | Transfer
    ) -> tuple[Movement, UUID | None, UUID | None]:
        """The movement of a posting command, and its (from, to) user wallets."""
        amount, currency = command.amount, command.currency
        if isinstance(command, Transfer):
            payer = self.user_wallet(tenant_id, command.from_wallet_id).id
            payee = self.user_wallet(tenant_id, command.to_wallet_id).id
            return Movement("transfer", payer, payee, amount, currency), payer, payee
        wallet = self.user_wallet(tenant_id, command.wallet_id).id
        system = self.system_wallet(tenant_id, currency)
        if isinstance(command, Credit):
            return Movement("credit", system, wallet, amount, currency), None, wallet
        return Movement("debit", wallet, system, amount, currency), wallet, None

    def _post(self, tenant_id: UUID, command: Credit | Debit | Transfer) -> Transaction:
        movement, payer, payee = self._movement(tenant_id, command)
        transaction_id = new_id()
        if movement.type == "credit":  # money from outside: no limit, no screen
            wallets = self._wallets_for_change(movement.source_id, movement.destination_id)
            rule, entries = None, tuple(post_movement(wallets, movement, transaction_id, self.at))
        else:
            rule, entries = self._screened_movement(tenant_id, movement, payee, transaction_id)
        transaction = Transaction(
            id=transaction_id,
            tenant_id=tenant_id,
            type=movement.type,
            status="posted" if rule is None else "pending_review",
            review_rule=rule,
            amount=command.amount,
            currency=command.currency,
            reference=command.reference,
            metadata=command.metadata,
            from_wallet_id=payer,
            to_wallet_id=payee,
            created_at=self.at,
            entries=entries,
        )
        self._record_transaction(transaction)
        return transaction

    def _record_transaction(self, transaction: Transaction) -> None:
        self.transactions.append(transaction)
        if transaction.status == "pending_review":
            self._emit(
                transaction.tenant_id, [review_event("review.created", transaction, self.at)]
            )
        else:
            self._emit(transaction.tenant_id, [posting_event(transaction, self._system_ids())])

    def _place_hold(self, tenant_id: UUID, command: PlaceHold) -> Hold:
        if command.amount <= 0:
            raise ValidationFailed("amount must be a positive integer")
        expires_at = command.expires_at
        if expires_at is not None and expires_at.utcoffset() is None:
            raise ValidationFailed("expires_at needs a time zone (use Z for UTC)")
        wallet = self.user_wallet(tenant_id, command.wallet_id)
        if expires_at is not None and expires_at <= self.at:
            raise ValidationFailed("expires_at must be in the future")
        wallets = self._wallets_for_change(wallet.id)
        place_hold(wallets[wallet.id], command.amount, command.currency, self.at)
        hold = Hold(
            new_id(),
            tenant_id,
            wallet.id,
            command.amount,
            command.currency,
            "pending",
            None,
            None,
            command.expires_at,
            self.at,
        )
        self.new_holds.append(hold)
        self._emit(tenant_id, [hold_event("hold.created", hold, self.at)])
        return hold

    def _capture(self, tenant_id: UUID, command: CaptureHold) -> Captured:
        if command.amount is not None and command.amount <= 0:
            raise ValidationFailed("amount must be a positive integer")
        hold = self.pending_hold(tenant_id, command.hold_id)
        taken = hold.amount if command.amount is None else command.amount
        if taken > hold.amount:
            raise ValidationFailed(f"capture amount {taken} is above the held {hold.amount}")
        if command.to_wallet_id is None:
            destination = self.system_wallet(tenant_id, hold.currency)
        else:
            destination = self.user_wallet(tenant_id, command.to_wallet_id).id
        movement = Movement(
            "capture", hold.wallet_id, destination, taken, hold.currency, release_held=hold.amount
        )
        transaction_id = new_id()
        rule, entries = self._screened_movement(
            tenant_id, movement, command.to_wallet_id, transaction_id
        )
        transaction = Transaction(
            id=transaction_id,
            tenant_id=tenant_id,
            type="capture",
            status="posted" if rule is None else "pending_review",
            review_rule=rule,
            amount=taken,
            currency=hold.currency,
            reference=None,
            metadata={},
            from_wallet_id=hold.wallet_id,
            to_wallet_id=command.to_wallet_id,
            created_at=self.at,
            hold_id=hold.id,
            entries=entries,
        )
        self._record_transaction(transaction)
        captured = replace(
            hold, status="captured", captured_amount=taken, transaction_id=transaction.id
        )
        self._set_hold(captured)
        self._emit(tenant_id, [hold_event("hold.captured", captured, self.at)])
        return Captured(captured, transaction)

    def _finish(self, hold: Hold, status: str) -> Hold:
        """Release a pending hold whole as ``voided`` or ``expired``."""
        wallets = self._wallets_for_change(hold.wallet_id)
        release_hold(wallets[hold.wallet_id], hold.amount, self.at)
        finished = replace(hold, status=status)  # type: ignore[arg-type]
        self._set_hold(finished)
        self._emit(hold.tenant_id, [hold_event(f"hold.{status}", finished, self.at)])
        return finished

    def expire_due_holds(self) -> None:
        """Expire every locked hold whose time has come, before any request runs.

        Outside every request: a capture or void of a due hold fails with
        ``hold_not_pending`` while the expiry itself stays.
        """
        assert not self._frames
        for hold in sorted(self.holds.values(), key=lambda hold: hold.id):
            if is_due(hold, self.at):
                self._finish(hold, "expired")
                self._expired_at_open.add(hold.id)

    def _expire_command(self, tenant_id: UUID, command: ExpireHold) -> Hold:
        hold = self.holds.get(command.hold_id)
        if hold is None or hold.tenant_id != tenant_id:
            raise NotFound(f"hold {command.hold_id} not found")
        if hold.id in self._expired_at_open:
            return hold  # due: expired when the book was opened
        raise HoldNotPending(f"hold {hold.id} is {hold.status}, not due to expire now")

    def _reverse(self, tenant_id: UUID, command: Reverse) -> Transaction:
        original = self.referenced_transaction(tenant_id, command.transaction_id)
        check_reversible(original)
        if original.id in self.reversed:
            raise AlreadyReversed(
                f"transaction {original.id} is already reversed by {self.reversed[original.id]}"
            )
        movement = mirror_movement(original)
        wallets = self._wallets_for_change(movement.source_id, movement.destination_id)
        reversal_id = new_id()
        try:
            entries = post_movement(wallets, movement, reversal_id, self.at)
        except InsufficientFunds as error:
            raise InsufficientFunds(
                f"reversing transaction {original.id} would take wallet {movement.source_id}"
                f" below its floor: {error.detail}"
            ) from error
        reversal = Transaction(
            id=reversal_id,
            tenant_id=tenant_id,
            type="reversal",
            status="posted",
            amount=original.amount,
            currency=original.currency,
            reference=None,
            metadata={},
            from_wallet_id=original.to_wallet_id,
            to_wallet_id=original.from_wallet_id,
            created_at=self.at,
            reverses_transaction_id=original.id,
            entries=tuple(entries),
        )
        self._record_transaction(reversal)
        if self._frames:
            self._frames[-1].reversed.add(original.id)
        self.reversed[original.id] = reversal.id
        self.actions.append(
            AdminAction(
                tenant_id,
                command.key_id,
                "transaction.reverse",
                "transaction",
                str(original.id),
                {"status": original.status, "reversed_by": None},
                {"status": "posted", "reversed_by": str(reversal.id), "reason": command.reason},
            )
        )
        return reversal

    def _decide(self, tenant_id: UUID, command: DecideReview) -> Transaction:
        pending = self.referenced_transaction(tenant_id, command.transaction_id)
        if pending.status != "pending_review":
            raise ReviewNotPending(
                f"transaction {pending.id} is {pending.status}, not pending_review"
            )
        assert pending.from_wallet_id is not None
        payer = pending.from_wallet_id
        if command.decision == "approve":
            destination = pending.to_wallet_id or self.system_wallet(tenant_id, pending.currency)
            movement = Movement(
                pending.type,
                payer,
                destination,
                pending.amount,
                pending.currency,
                release_held=pending.amount,
            )
            wallets = self._wallets_for_change(payer, destination)
            assert wallets[payer].held_balance >= pending.amount, "a pending review is held"
            entries = post_movement(wallets, movement, pending.id, self.at)
            decided = replace(pending, status="posted", entries=tuple(entries))
            self._emit(
                tenant_id,
                [
                    review_event("review.approved", decided, self.at),
                    posting_event(decided, self._system_ids()),
                ],
            )
        else:
            release_hold(self._wallets_for_change(payer)[payer], pending.amount, self.at)
            decided = replace(pending, status="rejected")
            self._emit(tenant_id, [review_event("review.rejected", decided, self.at)])
        self._set_referenced(decided)
        self.decided.append(decided)
        self.actions.append(
            AdminAction(
                tenant_id,
                command.key_id,
                f"review.{command.decision}",
                "transaction",
                str(pending.id),
                review_snapshot(pending),
                {**review_snapshot(decided), "reason": command.reason},
            )
        )
        return decided


def check_reversible(original: Transaction) -> None:
    """Only a posted, non-reversal transaction can be reversed."""
    if original.type == "reversal":
        raise ValidationFailed(
            f"transaction {original.id} is a reversal; reversals cannot be reversed"
        )
    if original.status != "posted":
        raise ValidationFailed(
            f"transaction {original.id} is {original.status}; only posted ones can be reversed"
        )


def mirror_movement(original: Transaction) -> Movement:
    """The movement that undoes ``original``: from its credited to its debited wallet."""
    debited = [entry for entry in original.entries if entry.amount < 0]
    credited = [entry for entry in original.entries if entry.amount > 0]
    assert len(debited) == 1, f"transaction {original.id} has {len(debited)} debit entries"
    assert len(credited) == 1, f"transaction {original.id} has {len(credited)} credit entries"
    assert credited[0].amount == -debited[0].amount == original.amount
    return Movement(
        "reversal", credited[0].wallet_id, debited[0].wallet_id, original.amount, original.currency
    )


def review_snapshot(transaction: Transaction) -> dict[str, Any]:
    """What the admin log records of a reviewed transaction."""
    return {
        "status": transaction.status,
        "type": transaction.type,
        "amount": transaction.amount,
        "currency": transaction.currency,
        "from_wallet_id": str(transaction.from_wallet_id),
        "to_wallet_id": str(transaction.to_wallet_id) if transaction.to_wallet_id else None,
        "rule": transaction.review_rule,
    }

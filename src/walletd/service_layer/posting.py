"""The posting engine: applies credits, debits and transfers in one database transaction.

A :class:`PostingRequest` is one client request: a list of commands (one, or up to
1,000 for a batch) with its own atomicity and idempotency key. :meth:`PostingEngine.post_group`
applies any number of requests — of any tenants — in ONE transaction: it locks every
wallet involved in id order, applies the pure rules of :mod:`walletd.domain.ledger` to
each command in turn on the shared locked state — a failing command changes nothing,
so its neighbours still get their exact answers — and writes everything with one
statement. Round trips per group: BEGIN, lock (which also reads the risk rules of each
tenant with a debit or transfer in the group), write, COMMIT; plus recent recipients
when a ``distinct_recipients`` rule exists, and one count when a wallet has a
per-minute limit. :mod:`walletd.service_layer.group_commit` gathers concurrent requests into
groups. A debit or transfer that a risk rule sends to review is written as a
``pending_review`` transaction without entries, its amount held on the paying wallet
(see docs/fraud-controls.md).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING
from uuid import UUID

import asyncpg

from walletd.adapters import ledger_store
from walletd.adapters.ledger_store import IdempotencyRow
from walletd.adapters.postgres import Database
from walletd.domain.commands import Credit, Debit, PostingCommand, Transfer
from walletd.domain.events import OutboxEvent, entry_events
from walletd.domain.ledger import Entry, Movement, WalletState, post_movement
from walletd.domain.records import Transaction
from walletd.domain.risk import RiskRule, hold_for_review, review_event
from walletd.errors import IdempotencyKeyInUse, NotFound, WalletdError
from walletd.ids import new_id
from walletd.service_layer.idempotency import (
    DuplicateKey,
    IdempotentRequest,
    Renderer,
    claim_key,
    is_duplicate_key,
)
from walletd.service_layer.risk_rules import (
    RiskScreen,
    load_screen,
    rules_from_text,
    screened_tenants,
)

if TYPE_CHECKING:
    from walletd.service_layer.group_commit import GroupCommitter

MAX_BATCH = 1000


@dataclass(frozen=True, slots=True)
class ItemFailure:
    """Command ``index`` of a request failed with ``error``; it changed nothing."""

    index: int
    error: WalletdError


PostingResult = Transaction | ItemFailure
# A request's outcome in a group: its results, or the error that stopped it alone
# (its key is still being used by another request: 409).
GroupOutcome = list[PostingResult] | WalletdError


@dataclass(frozen=True, slots=True)
class PostingRequest:
    """One client request: its commands, atomicity, and where its answer is stored."""

    tenant_id: UUID
    commands: Sequence[PostingCommand]
    atomic: bool = True
    request: IdempotentRequest | None = None
    render: Renderer | None = None


def posting_time(states: Sequence[WalletState]) -> datetime:
    """Now, but never before a locked wallet's last change: entry times never go back."""
    now = datetime.now(UTC)
    latest = max((state.updated_at for state in states), default=now)
    return max(now, latest)


@dataclass(slots=True)
class _Group:
    """The shared state of one group transaction."""

    states: dict[UUID, WalletState]
    screens: dict[UUID, RiskScreen]
    at: datetime


class PostingEngine:
    """Posts requests for one process; keeps a cache of system wallet ids."""

    def __init__(self, database: Database) -> None:
        self._database = database
        self._system_wallets: dict[tuple[UUID, str], UUID] = {}
        self.committer: GroupCommitter | None = None

    async def system_wallet(self, tenant_id: UUID, currency: str) -> UUID:
        """The tenant's system wallet id; created (and committed) on first use, then cached."""
        cached = self._system_wallets.get((tenant_id, currency))
        if cached is None:
            at = datetime.now(UTC)
            async with self._database.connection() as connection:
                cached = await ledger_store.ensure_system_wallet(
                    connection, tenant_id, currency, at
                )
            self._system_wallets[(tenant_id, currency)] = cached
        return cached

    async def _movements(
        self, tenant_id: UUID, commands: Sequence[PostingCommand]
    ) -> list[Movement]:
        movements = []
        for command in commands:
            if isinstance(command, Transfer):
                movements.append(
                    Movement(
                        "transfer",
                        command.from_wallet_id,
                        command.to_wallet_id,
                        command.amount,
                        command.currency,
                    )
                )
                continue
            system = await self.system_wallet(tenant_id, command.currency)
            if isinstance(command, Credit):
                movements.append(
                    Movement("credit", system, command.wallet_id, command.amount, command.currency)
                )
            else:
                movements.append(
                    Movement("debit", command.wallet_id, system, command.amount, command.currency)
                )
        return movements

    async def post(
        self,
        tenant_id: UUID,
        commands: Sequence[PostingCommand],
        *,
        atomic: bool = True,
        request: IdempotentRequest | None = None,
        render: Renderer | None = None,
    ) -> list[PostingResult]:
        """Apply ``commands``; with ``atomic`` the first failure cancels all of them.

        When ``request`` is given, ``render(results)`` gives the HTTP answer stored
        under its key in the same transaction; :class:`DuplicateKey` when taken.
        Goes through the group committer when one is attached.
        """
        assert 0 < len(commands) <= MAX_BATCH
        posting = PostingRequest(tenant_id, commands, atomic, request, render)
        if self.committer is not None:
            return await self.committer.submit(posting)
        (outcome,) = await self.post_group([posting])
        if isinstance(outcome, WalletdError):
            raise outcome
        return outcome

    async def post_group(self, postings: Sequence[PostingRequest]) -> list[GroupOutcome]:
        """Apply every request in one transaction; answers in request order."""
        assert postings
        try:
            async with self._database.unit_of_work() as uow:
                blocked = await self._claim_keys(uow.connection, postings)
                ready = [p for index, p in enumerate(postings) if index not in blocked]
                posted = await self._post_claimed(uow.connection, ready) if ready else []
                await uow.commit()
        except asyncpg.UniqueViolationError as error:
            if is_duplicate_key(error):
                keys = [p.request.key for p in postings if p.request is not None]
                raise DuplicateKey(",".join(keys)) from error
            raise
        answers = iter(posted)
        return [blocked[i] if i in blocked else next(answers) for i in range(len(postings))]

    async def _claim_keys(
        self, connection: asyncpg.Connection, postings: Sequence[PostingRequest]
    ) -> dict[int, WalletdError]:
        """Keys Redis could not lock are claimed here; a key still in use blocks its request."""
        blocked: dict[int, WalletdError] = {}
        for index, posting in enumerate(postings):
            try:
                await claim_key(connection, posting.tenant_id, posting.request)
            except IdempotencyKeyInUse as error:
                blocked[index] = error
        return blocked

    async def _post_claimed(
        self, connection: asyncpg.Connection, postings: Sequence[PostingRequest]
    ) -> list[list[PostingResult]]:
        """Lock, apply and write ``postings`` inside the caller's transaction."""
        plans = [await self._movements(p.tenant_id, p.commands) for p in postings]
        by_tenant: dict[UUID, list[Movement]] = defaultdict(list)
        for posting, movements in zip(postings, plans, strict=True):
            by_tenant[posting.tenant_id].extend(movements)
        wallet_ids = {w for plan in plans for m in plan for w in (m.source_id, m.destination_id)}
        screened = screened_tenants(by_tenant)
        states, stored = await ledger_store.lock_any_wallets(connection, wallet_ids, screened)
        rules = {
            tenant: rules_from_text(stored.get(tenant), tenant) if tenant in screened else ()
            for tenant in by_tenant
        }
        at = posting_time(list(states.values()))
        await self._load_minute_counts(connection, states, at)
        screens = await self._screens(connection, rules, by_tenant, at)
        group = _Group(states, screens, at)
        outcomes, touched = [], set()
        for posting, movements in zip(postings, plans, strict=True):
            results, changed = self._apply(posting, movements, group)
            outcomes.append(results)
            touched |= changed
        await self._write(connection, postings, outcomes, touched, states)
        return outcomes

    async def _screens(
        self,
        connection: asyncpg.Connection,
        rules: dict[UUID, tuple[RiskRule, ...]],
        by_tenant: dict[UUID, list[Movement]],
        at: datetime,
    ) -> dict[UUID, RiskScreen]:
        return {
            tenant: await load_screen(connection, tenant, rules[tenant], movements, at)
            for tenant, movements in by_tenant.items()
        }

    async def _load_minute_counts(
        self, connection: asyncpg.Connection, states: dict[UUID, WalletState], at: datetime
    ) -> None:
        limited = [
            state.id
            for state in states.values()
            if state.limits.max_debits_per_minute is not None and not state.is_system
        ]
        if not limited:
            return
        counts = await ledger_store.count_recent_debits_many(
            connection, limited, at - timedelta(minutes=1)
        )
        for wallet_id in limited:
            states[wallet_id].debits_last_minute = counts.get(wallet_id, 0)

    def _apply(
        self, posting: PostingRequest, movements: Sequence[Movement], group: _Group
    ) -> tuple[list[PostingResult], set[UUID]]:
        """One request on the group's state; an atomic failure restores what it changed."""
        involved = {w for m in movements for w in (m.source_id, m.destination_id)}
        screen = group.screens[posting.tenant_id]
        saved = None
        screen_mark = 0
        if posting.atomic:
            saved = {w: group.states[w].snapshot() for w in involved if w in group.states}
            screen_mark = screen.checkpoint()
        results: list[PostingResult] = []
        touched: set[UUID] = set()
        for index, (command, movement) in enumerate(zip(posting.commands, movements, strict=True)):
            try:
                results.append(self._apply_one(posting.tenant_id, command, movement, group))
                touched.update((movement.source_id, movement.destination_id))
            except WalletdError as error:
                if saved is not None:
                    group.states.update(saved)
                    screen.restore(screen_mark)
                    return [ItemFailure(index, error)], set()
                results.append(ItemFailure(index, error))
        return results, touched

    def _apply_one(
        self, tenant_id: UUID, command: PostingCommand, movement: Movement, group: _Group
    ) -> Transaction:
        states, at = group.states, group.at
        for wallet_id in (movement.source_id, movement.destination_id):
            state = states.get(wallet_id)
            if (
                state is None
                or state.tenant_id != tenant_id
                or (state.is_system and not _is_system_leg(command, wallet_id))
            ):
                raise NotFound(f"wallet {wallet_id} not found")
        transaction_id = new_id()
        screen = group.screens[tenant_id]
        review_rule = screen.check(movement, states[movement.source_id], at)
        entries: list[Entry] = []
        if review_rule is None:
            entries = post_movement(states, movement, transaction_id, at)
        else:
            hold_for_review(states, movement, at)
        screen.record(movement, at)
        from_wallet, to_wallet = _parties(command)
        return Transaction(
            id=transaction_id,
            tenant_id=tenant_id,
            type=movement.type,
            status="posted" if review_rule is None else "pending_review",
            review_rule=review_rule,
            amount=command.amount,
            currency=command.currency,
            reference=command.reference,
            metadata=command.metadata,
            from_wallet_id=from_wallet,
            to_wallet_id=to_wallet,
            created_at=at,
            entries=tuple(entries),
        )

    async def _write(
        self,
        connection: asyncpg.Connection,
        postings: Sequence[PostingRequest],
        outcomes: Sequence[Sequence[PostingResult]],
        touched: set[UUID],
        states: dict[UUID, WalletState],
    ) -> None:
        system_ids = frozenset(state.id for state in states.values() if state.is_system)
        transactions: list[Transaction] = []
        events: list[tuple[UUID, OutboxEvent]] = []
        rows: list[tuple[UUID, IdempotencyRow]] = []
        for posting, results in zip(postings, outcomes, strict=True):
            for result in results:
                if isinstance(result, Transaction):
                    transactions.append(result)
                    events.extend((posting.tenant_id, e) for e in _events(result, system_ids))
            if posting.request is not None:
                assert posting.render is not None
                rows.append((posting.tenant_id, posting.request.row(*posting.render(results))))
        changed = [states[wallet_id] for wallet_id in sorted(touched)]
        await ledger_store.write_group(connection, transactions, changed, events, rows)


def _events(transaction: Transaction, system_ids: frozenset[UUID]) -> list[OutboxEvent]:
    if transaction.status == "pending_review":
        return [review_event("review.created", transaction, transaction.created_at)]
    return entry_events(transaction, system_ids)


def _is_system_leg(command: PostingCommand, wallet_id: UUID) -> bool:
    """The system wallet may appear only as the outside party of a credit or debit."""
    if isinstance(command, Transfer):
        return False
    return wallet_id != command.wallet_id


def _parties(command: PostingCommand) -> tuple[UUID | None, UUID | None]:
    """(from, to) user wallets: a credit has no payer, a debit no payee."""
    if isinstance(command, Transfer):
        return command.from_wallet_id, command.to_wallet_id
    if isinstance(command, Credit):
        return None, command.wallet_id
    assert isinstance(command, Debit)
    return command.wallet_id, None

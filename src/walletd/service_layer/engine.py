"""The engine: the one road for every change of a balance.

A :class:`Request` is one client request: its commands (:mod:`walletd.domain.commands`:
credits, debits, transfers, a batch, holds placed, captured, voided or expired,
reversals, review decisions), its atomicity and the idempotency key its answer is stored
under. :meth:`Engine.post_group` applies any number of requests — of any tenants — in ONE
database transaction:

1. keys: one statement tells which keys are already bound (those requests are answered
   from PostgreSQL, never by failing the group) or held by a request still running;
2. lock: the holds and transactions the commands name are read, then every wallet
   involved is locked in id order (with the risk rules of each tenant that pays), then
   those holds and transactions, in id order;
3. apply: the pure rules of :class:`walletd.domain.book.Book` run request by request on
   the locked state; a failing command or atomic request changes nothing;
4. write: one named set of statements (:func:`walletd.adapters.ledger_store.write_book`)
   writes entries, wallets, holds, decisions, outbox events, admin log rows and every
   request's stored answer; then COMMIT.

:class:`walletd.service_layer.group_commit.GroupCommitter` gathers concurrent requests
into groups (see docs/transfer-walkthrough.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from uuid import UUID

import asyncpg
import structlog

from walletd.adapters import ledger_store
from walletd.adapters.postgres import Database
from walletd.domain.book import Book, ItemFailure, Outcome, Result
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
from walletd.domain.ledger import WalletState
from walletd.domain.records import Hold, Transaction
from walletd.domain.risk import RiskScreen
from walletd.errors import IdempotencyKeyInUse
from walletd.service_layer.group_commit import GroupCommitter
from walletd.service_layer.idempotency import (
    KEY_CLAIM_NAMESPACE,
    DuplicateKey,
    IdempotentRequest,
    Renderer,
    is_duplicate_key,
)
from walletd.service_layer.risk_rules import load_screen, rules_from_text

MAX_BATCH = 1000
# Money that leaves a wallet by its owner's wish: every such command is screened.
SCREENED = (Debit, Transfer, CaptureHold)
logger = structlog.get_logger("walletd.engine")


@dataclass(frozen=True, slots=True)
class Request:
    """One client request: its commands, atomicity, and where its answer is stored."""

    tenant_id: UUID
    commands: Sequence[Command]
    atomic: bool = True
    request: IdempotentRequest | None = None
    render: Renderer | None = None


# A request's outcome in a group: its results, or what stopped it alone (its key is
# still in use: 409; its key is already bound: the stored answer is replayed).
GroupOutcome = list[Outcome] | IdempotencyKeyInUse | DuplicateKey


def posting_time(states: Iterable[WalletState]) -> datetime:
    """Now, but never before a locked wallet's last change: entry times never go back."""
    now = datetime.now(UTC)
    return max(now, max((state.updated_at for state in states), default=now))


@dataclass(slots=True)
class _References:
    """What a group's commands name besides wallets, read before the locks."""

    holds: dict[UUID, Hold]
    transactions: dict[UUID, Transaction]


class Engine:
    """The engine of one process; keeps the system wallet ids it has seen."""

    def __init__(self, database: Database) -> None:
        self._database = database
        self._system_wallets: dict[tuple[UUID, str], UUID] = {}
        self._committer: GroupCommitter[Request, GroupOutcome] | None = None

    def start_group_commit(self, *, max_commands: int, max_in_flight: int) -> None:
        """Gather concurrent requests into shared transactions from now on."""
        assert self._committer is None
        self._committer = GroupCommitter(
            self.post_group,
            size=lambda request: len(request.commands),
            max_commands=max_commands,
            max_in_flight=max_in_flight,
        )

    async def stop_group_commit(self) -> None:
        """Let the groups in flight finish; requests after this post one by one."""
        committer, self._committer = self._committer, None
        if committer is not None:
            await committer.close()

    async def post(
        self,
        tenant_id: UUID,
        commands: Sequence[Command],
        *,
        atomic: bool = True,
        request: IdempotentRequest | None = None,
        render: Renderer | None = None,
    ) -> list[Outcome]:
        """Apply ``commands``; with ``atomic`` the first failure cancels all of them.

        When ``request`` is given, ``render(outcomes)`` gives the HTTP answer stored
        under its key in the same transaction; :class:`DuplicateKey` when the key is
        already bound, :class:`IdempotencyKeyInUse` while another request holds it.
        """
        assert 0 < len(commands) <= MAX_BATCH
        assert (request is None) == (render is None), "a stored answer needs its renderer"
        posting = Request(tenant_id, commands, atomic, request, render)
        if self._committer is not None:
            outcome = await self._committer.submit(posting)
        else:
            (outcome,) = await self.post_group([posting])
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def execute(self, tenant_id: UUID, command: Command) -> Result:
        """One command without a stored answer: its result, or its error raised."""
        (outcome,) = await self.post(tenant_id, [command])
        if isinstance(outcome, ItemFailure):
            raise outcome.error
        return outcome

    async def post_group(self, requests: Sequence[Request]) -> list[GroupOutcome]:
        """Apply every request in one transaction; answers in request order."""
        assert requests
        try:
            async with self._database.unit_of_work() as uow:
                blocked = await self._check_keys(uow.connection, requests)
                ready = [r for index, r in enumerate(requests) if index not in blocked]
                applied = await self._apply_and_write(uow.connection, ready) if ready else []
                await uow.commit()
        except asyncpg.UniqueViolationError as error:
            if is_duplicate_key(error):  # bound meanwhile by another process: retried alone
                keys = [r.request.key for r in requests if r.request is not None]
                raise DuplicateKey(",".join(keys)) from error
            raise
        answers = iter(applied)
        return [blocked[i] if i in blocked else next(answers) for i in range(len(requests))]

    async def _check_keys(
        self, connection: asyncpg.Connection, requests: Sequence[Request]
    ) -> dict[int, IdempotencyKeyInUse | DuplicateKey]:
        keyed = [(i, r) for i, r in enumerate(requests) if r.request is not None]
        checks = await ledger_store.check_keys(
            connection,
            [
                (
                    r.tenant_id,
                    r.request.key,
                    r.request.claim_in_database,
                    f"{KEY_CLAIM_NAMESPACE}:{r.tenant_id}:{r.request.key}",
                )
                for _, r in keyed
                if r.request is not None
            ],
        )
        blocked: dict[int, IdempotencyKeyInUse | DuplicateKey] = {}
        for (index, request), (in_use, taken) in zip(keyed, checks, strict=True):
            assert request.request is not None
            if in_use:
                blocked[index] = IdempotencyKeyInUse(
                    "the first request with this key has not finished; retry"
                )
            elif taken:
                blocked[index] = DuplicateKey(request.request.key)
        return blocked

    async def _apply_and_write(
        self, connection: asyncpg.Connection, requests: Sequence[Request]
    ) -> list[list[Outcome]]:
        book = await self._open_book(connection, requests)
        outcomes = [book.apply_request(r.tenant_id, r.commands, atomic=r.atomic) for r in requests]
        rows = []
        for request, results in zip(requests, outcomes, strict=True):
            if request.request is not None:
                assert request.render is not None
                rows.append((request.tenant_id, request.request.row(*request.render(results))))
        await ledger_store.write_book(connection, book, rows)
        _log_risk_decisions(book.screens.values())
        return outcomes

    async def _open_book(self, connection: asyncpg.Connection, requests: Sequence[Request]) -> Book:
        """Read what the commands name, lock it all in the one order, and open the book."""
        named = await self._references(connection, requests)
        system = await self._system_wallets_of(requests, named)
        screened = {
            r.tenant_id
            for r in requests
            if any(isinstance(command, SCREENED) for command in r.commands)
        }
        wallet_ids = _wallets_named(requests, named) | set(system.values())
        states, stored_rules = await ledger_store.lock_any_wallets(connection, wallet_ids, screened)
        holds = await ledger_store.read_holds(connection, named.holds, lock=True)
        referenced, reversals = await ledger_store.read_transactions(
            connection, named.transactions, lock=True
        )
        at = posting_time(states.values())
        await _load_minute_counts(connection, states, at)
        screens: dict[UUID, RiskScreen] = {}
        for tenant in {r.tenant_id for r in requests}:
            rules = rules_from_text(stored_rules.get(tenant), tenant) if tenant in screened else ()
            payers = _payers(tenant, requests, named)
            screens[tenant] = await load_screen(connection, tenant, rules, payers, at)
        book = Book(
            states,
            at,
            holds=holds,
            referenced=referenced,
            reversed=reversals,
            screens=screens,
            system_wallets=system,
        )
        book.expire_due_holds()
        return book

    async def _references(
        self, connection: asyncpg.Connection, requests: Sequence[Request]
    ) -> _References:
        hold_ids, transaction_ids = set(), set()
        for request in requests:
            for command in request.commands:
                if isinstance(command, CaptureHold | VoidHold | ExpireHold):
                    hold_ids.add(command.hold_id)
                elif isinstance(command, Reverse | DecideReview):
                    transaction_ids.add(command.transaction_id)
        holds = await ledger_store.read_holds(connection, hold_ids, lock=False)
        transactions, _ = await ledger_store.read_transactions(
            connection, transaction_ids, lock=False
        )
        return _References(holds, transactions)

    async def _system_wallets_of(
        self, requests: Sequence[Request], named: _References
    ) -> dict[tuple[UUID, str], UUID]:
        """The system wallets the commands may pay or be paid by, created on first use."""
        wanted: set[tuple[UUID, str]] = set()
        for request in requests:
            tenant = request.tenant_id
            for command in request.commands:
                if isinstance(command, Credit | Debit):
                    wanted.add((tenant, command.currency))
                elif isinstance(command, CaptureHold) and command.to_wallet_id is None:
                    hold = named.holds.get(command.hold_id)
                    if hold is not None and hold.tenant_id == tenant:
                        wanted.add((tenant, hold.currency))
                elif isinstance(command, DecideReview) and command.decision == "approve":
                    pending = named.transactions.get(command.transaction_id)
                    if pending is not None and pending.tenant_id == tenant:
                        wanted.add((tenant, pending.currency))
        return {pair: await self.system_wallet(*pair) for pair in sorted(wanted, key=str)}

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


def _wallets_named(requests: Sequence[Request], named: _References) -> set[UUID]:
    """Every wallet a command names directly or through its hold or transaction."""
    wallets: set[UUID] = set()
    for request in requests:
        for command in request.commands:
            if isinstance(command, Credit | Debit | PlaceHold):
                wallets.add(command.wallet_id)
            elif isinstance(command, Transfer):
                wallets.update((command.from_wallet_id, command.to_wallet_id))
            elif isinstance(command, CaptureHold | VoidHold | ExpireHold):
                hold = named.holds.get(command.hold_id)
                if hold is not None:
                    wallets.add(hold.wallet_id)
                if isinstance(command, CaptureHold) and command.to_wallet_id is not None:
                    wallets.add(command.to_wallet_id)
            else:
                transaction = named.transactions.get(command.transaction_id)
                if transaction is not None:
                    wallets.update(entry.wallet_id for entry in transaction.entries)
                    wallets.update(
                        w for w in (transaction.from_wallet_id, transaction.to_wallet_id) if w
                    )
    return wallets


def _payers(tenant_id: UUID, requests: Sequence[Request], named: _References) -> set[UUID]:
    """The tenant's wallets that pay a user wallet in this group (the recipients rule)."""
    payers: set[UUID] = set()
    for request in requests:
        if request.tenant_id != tenant_id:
            continue
        for command in request.commands:
            if isinstance(command, Transfer):
                payers.add(command.from_wallet_id)
            elif isinstance(command, CaptureHold) and command.to_wallet_id is not None:
                hold = named.holds.get(command.hold_id)
                if hold is not None:
                    payers.add(hold.wallet_id)
    return payers


async def _load_minute_counts(
    connection: asyncpg.Connection, states: dict[UUID, WalletState], at: datetime
) -> None:
    """``max_debits_per_minute`` needs each limited wallet's debits of the last minute."""
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


def _log_risk_decisions(screens: Iterable[RiskScreen]) -> None:
    for screen in screens:
        for payment, decision in screen.fired:
            logger.info(
                "risk_rule_fired",
                tenant_id=str(screen.tenant_id),
                wallet_id=str(payment.payer_id),
                rule=decision.rule.name,
                rule_type=decision.rule.type,
                action=decision.action,
                kind=payment.kind,
                amount=payment.amount,
                currency=payment.currency,
            )

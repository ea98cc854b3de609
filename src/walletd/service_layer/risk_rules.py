"""Risk rules use cases: read and replace a tenant's rules, and screen postings with them.

The posting engine reads each tenant's rules once per group, by the statement that
locks the group's wallets (:func:`screened_tenants` says whose, :func:`rules_from_text`
reads them), builds the :class:`RiskScreen` with :func:`load_screen` after the wallet
locks, then calls :meth:`RiskScreen.check` for each command. Rules are read in that
same transaction (no cache), so a ``PUT`` applies to every posting that starts after
it committed, in every process. The recipients query runs only when
a ``distinct_recipients`` rule exists and the call has transfers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from uuid import UUID

import asyncpg
import orjson
import structlog

from walletd.adapters import admin_log, review_store
from walletd.adapters.postgres import Database
from walletd.domain.ledger import Movement, WalletState
from walletd.domain.risk import (
    SCREENED_TYPES,
    Payment,
    RiskRule,
    evaluate_risk,
    parse_rules,
    recipients_window,
    rules_json,
)
from walletd.errors import RiskRejected, ValidationFailed
from walletd.service_layer.tenants import Principal

logger = structlog.get_logger("walletd.risk")


class RiskScreen:
    """The rules of one tenant plus what they need to know, for one posting call."""

    def __init__(
        self,
        tenant_id: UUID,
        rules: Sequence[RiskRule] = (),
        recipients: dict[UUID, dict[UUID, datetime]] | None = None,
    ) -> None:
        self._tenant_id = tenant_id
        self._rules = tuple(rules)
        self._recipients = recipients if recipients is not None else {}
        # What each record() replaced: (payer, recipient, previous time or None).
        self._undo: list[tuple[UUID, UUID, datetime | None]] = []

    def check(self, movement: Movement, payer: WalletState, at: datetime) -> str | None:
        """None: post it; a rule name: send it to review; raises :class:`RiskRejected`."""
        if not self._rules or movement.type not in SCREENED_TYPES:
            return None
        is_transfer = movement.type == "transfer"
        payment = Payment(
            kind="transfer" if is_transfer else "debit",
            payer_id=payer.id,
            payer_created_at=payer.created_at,
            recipient_id=movement.destination_id if is_transfer else None,
            amount=movement.amount,
            currency=movement.currency,
            at=at,
            recent_recipients=self._recipients.get(payer.id, {}),
        )
        decision = evaluate_risk(self._rules, payment)
        if decision is None:
            return None
        logger.info(
            "risk_rule_fired",
            tenant_id=str(self._tenant_id),
            wallet_id=str(payer.id),
            rule=decision.rule.name,
            rule_type=decision.rule.type,
            action=decision.action,
            kind=payment.kind,
            amount=payment.amount,
            currency=payment.currency,
        )
        if decision.action == "reject":
            raise RiskRejected(
                f"risk rule {decision.rule.name!r} ({decision.rule.type}) rejected this"
                f" {payment.kind}"
            )
        return decision.rule.name

    def checkpoint(self) -> int:
        """A mark for :meth:`restore`, which forgets what was recorded after it (O(1))."""
        return len(self._undo)

    def restore(self, mark: int) -> None:
        """Forget the records made since ``mark`` (a cancelled atomic request)."""
        while len(self._undo) > mark:
            payer, recipient, previous = self._undo.pop()
            seen = self._recipients[payer]
            if previous is None:
                del seen[recipient]
            else:
                seen[recipient] = previous

    def record(self, movement: Movement, at: datetime) -> None:
        """A transfer was posted or sent to review: later items of the call see its recipient.

        Without rules nothing reads the recipients, so nothing is recorded.
        """
        if not self._rules or movement.type != "transfer":
            return
        seen = self._recipients.setdefault(movement.source_id, {})
        self._undo.append(
            (movement.source_id, movement.destination_id, seen.get(movement.destination_id))
        )
        seen[movement.destination_id] = at


def stored_rules(value: object, tenant_id: UUID) -> tuple[RiskRule, ...]:
    """Rules read back from the database are validated again; bad ones stop postings."""
    try:
        return parse_rules(value if value is not None else [])
    except ValidationFailed as error:
        raise RuntimeError(
            f"stored risk rules of tenant {tenant_id} are invalid: {error}"
        ) from error


def screened_tenants(by_tenant: Mapping[UUID, Sequence[Movement]]) -> set[UUID]:
    """The tenants whose rules a group needs: those with a movement to screen."""
    return {
        tenant
        for tenant, movements in by_tenant.items()
        if any(movement.type in SCREENED_TYPES for movement in movements)
    }


def rules_from_text(text: str | None, tenant_id: UUID) -> tuple[RiskRule, ...]:
    """A tenant's stored rules from their JSON text (None: the tenant has none here)."""
    return stored_rules(None if text is None else orjson.loads(text), tenant_id)


async def load_screen(
    connection: asyncpg.Connection,
    tenant_id: UUID,
    rules: Sequence[RiskRule],
    movements: Sequence[Movement],
    at: datetime,
) -> RiskScreen:
    """The screen for one posting call, after the wallet locks.

    The recipients query runs under the paying wallets' locks (so concurrent transfers
    of one payer see each other) and only when a rule needs it and the call has transfers.
    """
    window = recipients_window(rules)
    payers = {movement.source_id for movement in movements if movement.type == "transfer"}
    if window is None or not payers:
        return RiskScreen(tenant_id, rules)
    window_minutes, per_payer = window
    recipients = await review_store.recent_recipients(
        connection, tenant_id, payers, at - timedelta(minutes=window_minutes), per_payer
    )
    return RiskScreen(tenant_id, rules, recipients)


class RiskRuleService:
    """``GET`` and ``PUT /v1/risk-rules``."""

    def __init__(self, database: Database) -> None:
        self._database = database

    async def get(self, tenant_id: UUID) -> tuple[RiskRule, ...]:
        async with self._database.connection() as connection:
            return stored_rules(await review_store.load_rules(connection, tenant_id), tenant_id)

    async def replace(self, principal: Principal, raw_rules: object) -> tuple[RiskRule, ...]:
        """Validate all of ``raw_rules`` first; an invalid one replaces nothing."""
        rules = parse_rules(raw_rules)
        stored = rules_json(rules)
        async with self._database.unit_of_work() as uow:
            before = await review_store.replace_rules(uow.connection, principal.tenant_id, stored)
            await admin_log.record_action(
                uow.connection,
                tenant_id=principal.tenant_id,
                key_id=principal.key_id,
                action="risk_rules.replace",
                target_type="tenant",
                target_id=str(principal.tenant_id),
                before=before,
                after=stored,
            )
            await uow.commit()
        logger.info(
            "risk_rules_replaced",
            tenant_id=str(principal.tenant_id),
            rules=[rule.name for rule in rules],
        )
        return rules

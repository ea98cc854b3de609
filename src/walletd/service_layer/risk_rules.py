"""Risk rules use cases: read and replace a tenant's rules, and load what screens need.

The engine reads each tenant's rules once per group, by the statement that locks the
group's wallets (for the tenants with money leaving a wallet; :func:`rules_from_text`
reads them), builds the :class:`~walletd.domain.risk.RiskScreen` with
:func:`load_screen` after the wallet locks, and the book calls its ``check`` for every
debit, transfer and capture. Rules are read in that same transaction (no cache), so a
``PUT`` applies to every posting that starts after it committed, in every process. The
recipients query runs only when a ``distinct_recipients`` rule exists and the group
pays a user wallet.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime, timedelta
from uuid import UUID

import asyncpg
import orjson
import structlog

from walletd.adapters import admin_log, review_store
from walletd.adapters.postgres import Database
from walletd.domain.risk import RiskRule, RiskScreen, parse_rules, recipients_window, rules_json
from walletd.errors import ValidationFailed
from walletd.service_layer.tenants import Principal

logger = structlog.get_logger("walletd.risk")


def stored_rules(value: object, tenant_id: UUID) -> tuple[RiskRule, ...]:
    """Rules read back from the database are validated again; bad ones stop postings."""
    try:
        return parse_rules(value if value is not None else [])
    except ValidationFailed as error:
        raise RuntimeError(
            f"stored risk rules of tenant {tenant_id} are invalid: {error}"
        ) from error


def rules_from_text(text: str | None, tenant_id: UUID) -> tuple[RiskRule, ...]:
    """A tenant's stored rules from their JSON text (None: the tenant has none here)."""
    return stored_rules(None if text is None else orjson.loads(text), tenant_id)


async def load_screen(
    connection: asyncpg.Connection,
    tenant_id: UUID,
    rules: Sequence[RiskRule],
    payers: Collection[UUID],
    at: datetime,
) -> RiskScreen:
    """The screen of one tenant for one group, after the wallet locks.

    ``payers`` are the wallets that pay a user wallet in the group. The recipients query
    runs under their locks (so concurrent payments of one payer see each other) and
    only when a rule needs it.
    """
    window = recipients_window(rules)
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

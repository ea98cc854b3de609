"""Keyword-argument helpers over the engine for tests: holds, reversals, review decisions.

Each call builds its command and gives it to the one engine, exactly as the HTTP routes
do; a failed command raises its error.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal
from uuid import UUID

from walletd.adapters.postgres import Database
from walletd.domain.book import Captured
from walletd.domain.commands import CaptureHold, DecideReview, PlaceHold, Reverse, VoidHold
from walletd.domain.records import Hold, Transaction
from walletd.service_layer.engine import Engine
from walletd.service_layer.hold_expiry import EXPIRY_BATCH_HOLDS, expire_due
from walletd.service_layer.queries import LedgerQueries
from walletd.service_layer.tenants import Principal


class Holds:
    """Place, read, capture, void and expire holds through the engine."""

    def __init__(self, database: Database, engine: Engine) -> None:
        self.database, self.engine = database, engine
        self.queries = LedgerQueries(database)

    async def place(
        self,
        tenant_id: UUID,
        *,
        wallet_id: UUID,
        amount: int,
        currency: str,
        expires_at: datetime | None = None,
    ) -> Hold:
        result = await self.engine.execute(
            tenant_id, PlaceHold(wallet_id, amount, currency, expires_at)
        )
        assert isinstance(result, Hold)
        return result

    async def get(self, tenant_id: UUID, hold_id: UUID) -> Hold:
        return await self.queries.hold(tenant_id, hold_id)

    async def capture_result(
        self,
        tenant_id: UUID,
        hold_id: UUID,
        *,
        amount: int | None = None,
        to_wallet_id: UUID | None = None,
    ) -> Captured:
        result = await self.engine.execute(tenant_id, CaptureHold(hold_id, amount, to_wallet_id))
        assert isinstance(result, Captured)
        return result

    async def capture(
        self,
        tenant_id: UUID,
        hold_id: UUID,
        *,
        amount: int | None = None,
        to_wallet_id: UUID | None = None,
    ) -> Hold:
        captured = await self.capture_result(
            tenant_id, hold_id, amount=amount, to_wallet_id=to_wallet_id
        )
        return captured.hold

    async def void(self, tenant_id: UUID, hold_id: UUID) -> Hold:
        result = await self.engine.execute(tenant_id, VoidHold(hold_id))
        assert isinstance(result, Hold)
        return result

    async def expire_due(self, *, max_holds: int = EXPIRY_BATCH_HOLDS) -> int:
        return await expire_due(self.database, self.engine, max_holds=max_holds)


class Reversals:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def reverse(
        self, principal: Principal, transaction_id: UUID, *, reason: str | None = None
    ) -> Transaction:
        result = await self.engine.execute(
            principal.tenant_id, Reverse(transaction_id, principal.key_id, reason)
        )
        assert isinstance(result, Transaction)
        return result


class Reviews:
    def __init__(self, database: Database, engine: Engine) -> None:
        self.engine = engine
        self.queries = LedgerQueries(database)

    async def pending(
        self, tenant_id: UUID, after: tuple[datetime, UUID] | None, limit: int
    ) -> list[Transaction]:
        return await self.queries.pending_reviews(tenant_id, after, limit)

    async def decide(
        self,
        principal: Principal,
        transaction_id: UUID,
        decision: Literal["approve", "reject"],
        reason: str | None,
    ) -> Transaction:
        command = DecideReview(transaction_id, decision, principal.key_id, reason)
        result = await self.engine.execute(principal.tenant_id, command)
        assert isinstance(result, Transaction)
        return result

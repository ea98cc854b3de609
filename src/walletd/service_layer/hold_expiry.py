"""The hold expiry loop of the API: due holds are given to the engine as ``ExpireHold``.

Every API process runs one. Each round reads up to :data:`EXPIRY_BATCH_HOLDS` pending
holds past their ``expires_at`` (unlocked) and posts one non-atomic request per tenant of
:class:`~walletd.domain.commands.ExpireHold` commands. The engine locks each hold's
wallet, then the hold, and expires every due hold it locked, so any number of processes
may race: a hold leaves ``pending`` once, and the losers' commands answer
``hold_not_pending``, which is not an error here. A capture or void that locks a due hold
first expires it the same way (and answers ``hold_not_pending``).
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from uuid import UUID

import structlog

from walletd.adapters import hold_store
from walletd.adapters.postgres import Database
from walletd.domain.commands import ExpireHold
from walletd.domain.records import Hold
from walletd.errors import WalletdError
from walletd.service_layer.engine import MAX_BATCH, Engine

EXPIRY_BATCH_HOLDS = 200  # holds looked at per expiry round
EXPIRY_ROUNDS_PER_RUN = 10  # rounds per loop tick while rounds come back full
EXPIRY_STOP_TIMEOUT_SECONDS = 5.0

logger = structlog.get_logger("walletd.holds")


async def expire_due(
    database: Database, engine: Engine, *, max_holds: int = EXPIRY_BATCH_HOLDS
) -> int:
    """Expire up to ``max_holds`` due holds; how many this call expired."""
    assert 0 < max_holds <= MAX_BATCH
    async with database.connection() as connection:
        due = await hold_store.due_holds(connection, datetime.now(UTC), max_holds)
    by_tenant: dict[UUID, list[ExpireHold]] = {}
    for tenant_id, hold_id in due:
        by_tenant.setdefault(tenant_id, []).append(ExpireHold(hold_id))
    expired = 0
    for tenant_id, commands in by_tenant.items():
        outcomes = await engine.post(tenant_id, commands, atomic=False)
        expired += sum(isinstance(o, Hold) and o.status == "expired" for o in outcomes)
    return expired


class HoldExpirer:
    """The API process's background task: expire due holds every ``interval_seconds``."""

    def __init__(self, database: Database, engine: Engine, interval_seconds: float) -> None:
        assert interval_seconds > 0
        self._database = database
        self._engine = engine
        self._interval_seconds = interval_seconds
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        assert self._task is None, "the expirer is already running"
        self._task = asyncio.create_task(self._run(), name="walletd-hold-expiry")

    async def stop(self, timeout_seconds: float = EXPIRY_STOP_TIMEOUT_SECONDS) -> None:
        """Let the current round finish (cancel it after ``timeout_seconds``)."""
        if self._task is None:
            return
        self._stopping.set()
        task, self._task = self._task, None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(task, timeout_seconds)

    async def run_once(self) -> int:
        """Expire due holds in bounded rounds; errors are logged, never raised."""
        total = 0
        try:
            for _ in range(EXPIRY_ROUNDS_PER_RUN):
                expired = await expire_due(self._database, self._engine)
                total += expired
                if expired < EXPIRY_BATCH_HOLDS or self._stopping.is_set():
                    break
        except WalletdError as error:
            logger.warning("hold_expiry_failed", error=error.detail)
        except Exception as error:  # the loop must outlive one bad round; it is logged
            logger.exception("hold_expiry_failed", error=repr(error))
        if total:
            logger.info("holds_expired", count=total)
        return total

    async def _run(self) -> None:
        while not self._stopping.is_set():
            await self.run_once()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._interval_seconds)

"""Group commit: concurrent requests share one database transaction.

Requests wait in a bounded queue; up to ``max_in_flight`` flushers each take what has
gathered (at most ``max_commands`` commands) and hand it to ``flush`` — the engine's
:meth:`~walletd.service_layer.engine.Engine.post_group`: one lock statement, one write,
one commit for the lot, the way TigerBeetle batches. Under light load a request is
flushed at once (no timer); under heavy load batches grow by themselves.

Each request keeps its own exact answer: the rules run per request on the shared
locked state, so an insufficient-funds request fails alone. If the group's
transaction fails as a whole (a key bound meanwhile by another process, a deadlock, a
bug), every request of it is retried alone, so one bad request cannot take its
neighbours down with it — a statement or lock wait that hit its server-side bound
(:class:`~walletd.errors.TimedOut`) included: only an outage
(:class:`~walletd.errors.Unavailable`) fails them all. This module knows nothing of HTTP
or of the ledger.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import structlog
from prometheus_client import Counter, Histogram

from walletd.errors import TimedOut, Unavailable

logger = structlog.get_logger("walletd.group_commit")

MAX_QUEUE = 10_000
GROUP_SIZE = Histogram(
    "walletd_group_commit_requests",
    "Requests posted per database transaction",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
GROUP_RETRIES = Counter(
    "walletd_group_commit_retried_alone_total", "Groups whose requests were retried one by one"
)

RequestT = TypeVar("RequestT")
OutcomeT = TypeVar("OutcomeT")


@dataclass(slots=True)
class _Pending(Generic[RequestT, OutcomeT]):
    request: RequestT
    future: asyncio.Future[OutcomeT] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class GroupCommitter(Generic[RequestT, OutcomeT]):
    """Gathers requests of one process into shared transactions through ``flush``."""

    def __init__(
        self,
        flush: Callable[[Sequence[RequestT]], Awaitable[Sequence[OutcomeT]]],
        *,
        size: Callable[[RequestT], int],
        max_commands: int = 256,
        max_in_flight: int = 2,
    ) -> None:
        assert max_commands >= 1
        assert max_in_flight >= 1
        self._flush_group = flush
        self._size = size
        self._max_commands = max_commands
        self._max_in_flight = max_in_flight
        self._queue: deque[_Pending[RequestT, OutcomeT]] = deque()
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, request: RequestT) -> OutcomeT:
        """The outcome of ``request`` in the next group; raises what posting it alone would."""
        if len(self._queue) >= MAX_QUEUE:
            raise Unavailable("too many postings are waiting; retry shortly")
        pending: _Pending[RequestT, OutcomeT] = _Pending(request)
        self._queue.append(pending)
        self._kick()
        return await pending.future

    def _kick(self) -> None:
        while self._queue and self._in_flight < self._max_in_flight:
            self._in_flight += 1
            task = asyncio.create_task(self._flush())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _take(self) -> list[_Pending[RequestT, OutcomeT]]:
        group: list[_Pending[RequestT, OutcomeT]] = []
        commands = 0
        while self._queue:
            size = self._size(self._queue[0].request)
            if group and commands + size > self._max_commands:
                break
            group.append(self._queue.popleft())
            commands += size
        return group

    async def _flush(self) -> None:
        try:
            while self._queue:
                group = self._take()
                await self._post(group)
        finally:
            self._in_flight -= 1
            self._kick()

    async def _post(self, group: list[_Pending[RequestT, OutcomeT]]) -> None:
        GROUP_SIZE.observe(len(group))
        try:
            outcomes = await self._flush_group([pending.request for pending in group])
        except (asyncio.CancelledError, Exception) as error:  # every waiter must hear of it
            outage = isinstance(error, Unavailable) and not isinstance(error, TimedOut)
            if len(group) == 1 or outage or isinstance(error, asyncio.CancelledError):
                for pending in group:
                    _fail(pending, error)
                if isinstance(error, asyncio.CancelledError):
                    raise
                return
            logger.info("group_retried_alone", size=len(group), error=type(error).__name__)
            GROUP_RETRIES.inc()
            for pending in group:
                await self._post([pending])
            return
        for pending, outcome in zip(group, outcomes, strict=True):
            if not pending.future.done():
                pending.future.set_result(outcome)

    async def close(self) -> None:
        """Wait for in-flight groups (bounded by the database timeouts)."""
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _fail(pending: _Pending[RequestT, OutcomeT], error: BaseException) -> None:
    if pending.future.done():
        return
    if isinstance(error, asyncio.CancelledError):
        pending.future.cancel()
    else:
        pending.future.set_exception(error)

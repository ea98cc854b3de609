"""The one composition root: every service of an API process, built in one place.

:func:`build_services` builds each service into a typed field of :class:`Services`
(no I/O); :func:`start` and :func:`stop` are the API's lifespan: the database pool,
group commit, the Redis scripts, the idempotency-key pruner and the hold expiry loop.
Handlers receive the :class:`Services`; none builds a service of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

import structlog

from walletd.adapters.postgres import Database
from walletd.adapters.redis_client import RedisClient, create_redis_client
from walletd.service_layer.engine import Engine
from walletd.service_layer.hold_expiry import HoldExpirer
from walletd.service_layer.idempotency import run_pruner
from walletd.service_layer.idempotency_cache import IdempotencyCache
from walletd.service_layer.key_cache import KeyCache
from walletd.service_layer.queries import LedgerQueries
from walletd.service_layer.rate_limit import RateLimiter
from walletd.service_layer.risk_rules import RiskRuleService
from walletd.service_layer.wallets import WalletService
from walletd.settings import Settings

STOP_TIMEOUT_SECONDS = 5.0
logger = structlog.get_logger("walletd.bootstrap")


@dataclass
class Services:
    """Everything a request handler may use; one instance per process."""

    settings: Settings
    database: Database
    engine: Engine
    wallets: WalletService
    queries: LedgerQueries
    risk_rules: RiskRuleService
    keys: KeyCache
    hold_expirer: HoldExpirer
    redis: RedisClient | None
    idempotency_cache: IdempotencyCache | None
    rate_limiter: RateLimiter | None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)


def build_services(settings: Settings) -> Services:
    database = Database(
        settings.database_url,
        min_size=min(settings.database_pool_min, settings.database_pool_max),
        max_size=settings.database_pool_max,
        command_timeout_seconds=settings.database_timeout_seconds,
        acquire_timeout_seconds=settings.database_acquire_timeout_seconds,
        server_settings=settings.database_session_settings(),
    )
    engine = Engine(database)
    redis = cache = limiter = None
    if settings.redis_url:
        redis = create_redis_client(
            settings.redis_url, timeout_seconds=settings.redis_timeout_seconds
        )
        cache = IdempotencyCache(
            redis,
            retention_seconds=settings.idempotency_retention_hours * 3600,
            lock_seconds=settings.idempotency_lock_seconds,
        )
    if settings.rate_limit_per_second > 0:
        limiter = RateLimiter(redis, settings.rate_limit_per_second, settings.rate_limit_burst)
        if redis is None:
            logger.warning("rate_limit_without_redis", behaviour="fail_open")
    return Services(
        settings=settings,
        database=database,
        engine=engine,
        wallets=WalletService(database),
        queries=LedgerQueries(database),
        risk_rules=RiskRuleService(database),
        keys=KeyCache(database),
        hold_expirer=HoldExpirer(database, engine, settings.hold_expiry_interval_seconds),
        redis=redis,
        idempotency_cache=cache,
        rate_limiter=limiter,
    )


async def start(services: Services) -> None:
    """Open the pool, start group commit, load the Redis scripts, start the loops.

    An unreachable Redis at start is only a warning: requests take the database path.
    """
    settings = services.settings
    await services.database.connect()
    services.engine.start_group_commit(
        max_commands=settings.group_commit_max_batch,
        max_in_flight=settings.group_commit_max_in_flight,
    )
    cache = services.idempotency_cache
    if cache is not None and not await cache.load_scripts():
        logger.warning("redis_unreachable_at_start", fallback="postgresql")
    retention_seconds = settings.idempotency_retention_hours * 3600
    services._tasks.append(
        asyncio.create_task(
            run_pruner(services.database, retention_seconds), name="walletd-idempotency-pruner"
        )
    )
    services.hold_expirer.start()


async def stop(services: Services) -> None:
    """Stop in reverse: the loops, group commit (in-flight groups finish), Redis, the pool."""
    for task in services._tasks:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(task, STOP_TIMEOUT_SECONDS)
    services._tasks.clear()
    await services.hold_expirer.stop()
    await services.engine.stop_group_commit()
    if services.redis is not None:
        await services.redis.close()
    await services.database.close()

"""The FastAPI application: services wired at start-up, routers, errors, middleware."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from fastapi import FastAPI

from walletd.adapters.postgres import Database
from walletd.entrypoints.http import (
    problems,
    routes_admin,
    routes_holds,
    routes_money,
    routes_ops,
    routes_wallets,
)
from walletd.entrypoints.http.deps import Services
from walletd.entrypoints.http.idempotent import start_idempotency, stop_idempotency
from walletd.entrypoints.http.lean import LeanPostingMiddleware
from walletd.entrypoints.http.limits import BodyLimitMiddleware
from walletd.entrypoints.http.observe import ObserveMiddleware
from walletd.runtime import settle_heap
from walletd.service_layer.group_commit import GroupCommitter
from walletd.service_layer.posting import PostingEngine
from walletd.service_layer.queries import LedgerQueries
from walletd.service_layer.wallets import WalletService
from walletd.settings import Settings

logger = structlog.get_logger("walletd.http")


def build_services(settings: Settings) -> Services:
    database = Database(
        settings.database_url,
        min_size=min(settings.database_pool_min, settings.database_pool_max),
        max_size=settings.database_pool_max,
        command_timeout_seconds=settings.database_timeout_seconds,
        acquire_timeout_seconds=settings.database_acquire_timeout_seconds,
    )
    return Services(
        settings=settings,
        database=database,
        engine=PostingEngine(database),
        wallets=WalletService(database),
        queries=LedgerQueries(database),
    )


def create_app(settings: Settings) -> FastAPI:
    services = build_services(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await services.database.connect()
        committer = GroupCommitter(
            services.engine,
            max_commands=settings.group_commit_max_batch,
            max_in_flight=settings.group_commit_max_in_flight,
        )
        services.engine.committer = committer
        logger.info("api_started", pid=_pid())
        await start_idempotency(services)
        hold_expiry = routes_holds.start_hold_expiry(services)
        settle_heap()
        try:
            yield
        finally:
            await stop_idempotency(services)
            await hold_expiry.stop()
            services.engine.committer = None
            await committer.close()
            await services.database.close()

    app = FastAPI(
        title="walletd",
        version="0.1.0",
        lifespan=lifespan,
        description="Wallet engine: double-entry ledger with idempotent money movement.",
        # walletd reports through Prometheus (/metrics) and structlog; FastAPI's own
        # OpenTelemetry hooks would otherwise look up the global providers per request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.services = services
    problems.install(app)
    app.include_router(routes_ops.router)
    for router in (routes_wallets, routes_money, routes_holds, routes_admin):
        app.include_router(router.router, responses=problems.PROBLEM_RESPONSES)
    # Innermost first: the lean path sees bodies only within the limit, and its answers
    # pass through the request metrics like every route's.
    app.add_middleware(LeanPostingMiddleware, services=services, routes=app.routes)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(ObserveMiddleware)
    return app


def _pid() -> int:
    import os

    return os.getpid()

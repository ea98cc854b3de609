"""The FastAPI application: services wired at start-up, routers, errors, middleware."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from fastapi import FastAPI

from walletd.entrypoints import bootstrap
from walletd.entrypoints.http import (
    problems,
    routes_admin,
    routes_holds,
    routes_money,
    routes_ops,
    routes_wallets,
)
from walletd.entrypoints.http.lean import LeanPostingMiddleware
from walletd.entrypoints.http.limits import BodyLimitMiddleware
from walletd.entrypoints.http.observe import ObserveMiddleware
from walletd.runtime import settle_heap
from walletd.settings import Settings

logger = structlog.get_logger("walletd.http")


def create_app(settings: Settings) -> FastAPI:
    services = bootstrap.build_services(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await bootstrap.start(services)
        logger.info("api_started", pid=os.getpid())
        settle_heap()
        try:
            yield
        finally:
            await bootstrap.stop(services)

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

"""Operational endpoints: liveness, readiness, Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import PlainTextResponse, Response

from walletd.adapters.metrics import exposition
from walletd.entrypoints.http.deps import ServicesDep
from walletd.entrypoints.http.idempotent import json_response
from walletd.entrypoints.http.problems import error_response
from walletd.errors import Unavailable

router = APIRouter()


@router.get("/healthz")
async def healthz() -> Response:
    return json_response(200, b'{"status":"ok"}')


@router.get(
    "/readyz",
    responses={503: {"description": "PostgreSQL does not answer (problem+json)"}},
)
async def readyz(services: ServicesDep) -> Response:
    if await services.database.ping():
        return json_response(200, b'{"status":"ready"}')
    return error_response(Unavailable("PostgreSQL does not answer"))


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
)
async def metrics() -> Response:
    payload, content_type = exposition()
    return Response(payload, media_type=content_type)

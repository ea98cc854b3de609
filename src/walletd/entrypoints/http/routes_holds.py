"""Hold endpoints (place, read, capture, void) and the admin reversal of a transaction.

Each builds its command and gives it to the engine through :func:`commands.submit`, like
every posting.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import APIRouter, Body, Request
from pydantic import AwareDatetime, BaseModel, Field, StrictStr
from starlette.responses import Response

from walletd.domain.commands import CaptureHold, PlaceHold, Reverse, VoidHold
from walletd.entrypoints.http import render
from walletd.entrypoints.http.commands import render_one, submit
from walletd.entrypoints.http.deps import (
    AdminPrincipal,
    OptionalKey,
    ReadPrincipal,
    RequiredKey,
    ServicesDep,
    WritePrincipal,
    path_uuid,
)
from walletd.entrypoints.http.idempotent import json_response
from walletd.entrypoints.http.schemas import (
    NUL_FREE,
    Amount,
    Currency,
    RequestModel,
    TransactionPublic,
)

router = APIRouter(prefix="/v1")

PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    404: {"description": "No such hold, wallet or transaction for this tenant (problem+json)"},
    422: {"description": "Validation or business rule error (problem+json)"},
}


class HoldCreate(RequestModel):
    wallet_id: UUID
    amount: Amount
    currency: Currency
    expires_at: AwareDatetime | None = Field(
        default=None, description="When the hold releases itself; must be in the future"
    )


class HoldCapture(RequestModel):
    amount: Amount | None = Field(default=None, description="Default: the whole hold")
    to_wallet_id: UUID | None = Field(
        default=None, description="Pay this wallet; default: money leaves to the outside"
    )


class ReverseBody(RequestModel):
    reason: Annotated[StrictStr, Field(max_length=1000, pattern=NUL_FREE)] | None = None


class HoldPublic(BaseModel):
    id: UUID
    wallet_id: UUID
    amount: int
    currency: str
    status: Literal["pending", "captured", "voided", "expired"]
    captured_amount: int | None
    transaction_id: UUID | None
    expires_at: datetime | None
    created_at: datetime


@router.post("/holds", status_code=201, response_model=HoldPublic, responses=PROBLEM_RESPONSES)
async def create_hold(
    body: HoldCreate,
    principal: WritePrincipal,
    key: RequiredKey,
    services: ServicesDep,
) -> Response:
    command = PlaceHold(body.wallet_id, body.amount, body.currency, body.expires_at)
    return await submit(
        services,
        principal.tenant_id,
        key,
        ("POST", "/v1/holds"),
        body.model_dump(mode="json"),
        [command],
        render_one(status=201),
    )


@router.get("/holds/{hold_id}", response_model=HoldPublic, responses=PROBLEM_RESPONSES)
async def get_hold(hold_id: str, principal: ReadPrincipal, services: ServicesDep) -> Response:
    hold = await services.queries.hold(principal.tenant_id, path_uuid(hold_id, "hold"))
    return json_response(200, render.dumps(render.hold_json(hold)))


@router.post(
    "/holds/{hold_id}/capture",
    response_model=HoldPublic,
    responses={
        202: {"model": HoldPublic, "description": "Captured into review: pending_review"},
        **PROBLEM_RESPONSES,
    },
)
async def capture_hold(
    request: Request,
    hold_id: str,
    principal: WritePrincipal,
    key: RequiredKey,
    services: ServicesDep,
    body: Annotated[HoldCapture | None, Body()] = None,
) -> Response:
    capture = body or HoldCapture()
    command = CaptureHold(path_uuid(hold_id, "hold"), capture.amount, capture.to_wallet_id)
    return await submit(
        services,
        principal.tenant_id,
        key,
        ("POST", request.url.path),
        capture.model_dump(mode="json"),
        [command],
        render_one(),
    )


@router.post("/holds/{hold_id}/void", response_model=HoldPublic, responses=PROBLEM_RESPONSES)
async def void_hold(
    request: Request,
    hold_id: str,
    principal: WritePrincipal,
    key: OptionalKey,
    services: ServicesDep,
) -> Response:
    command = VoidHold(path_uuid(hold_id, "hold"))
    return await submit(
        services,
        principal.tenant_id,
        key,
        ("POST", request.url.path),
        None,
        [command],
        render_one(),
    )


@router.post(
    "/transactions/{transaction_id}/reverse",
    status_code=201,
    response_model=TransactionPublic,
    responses=PROBLEM_RESPONSES,
)
async def reverse_transaction(
    request: Request,
    transaction_id: str,
    principal: AdminPrincipal,
    key: OptionalKey,
    services: ServicesDep,
    body: Annotated[ReverseBody | None, Body()] = None,
) -> Response:
    reverse = body or ReverseBody()
    command = Reverse(path_uuid(transaction_id, "transaction"), principal.key_id, reverse.reason)
    return await submit(
        services,
        principal.tenant_id,
        key,
        ("POST", request.url.path),
        reverse.model_dump(mode="json"),
        [command],
        render_one(),
    )

"""Hold endpoints (place, read, capture, void) and the admin reversal of a transaction.

Also wires the hold expiry loop into the API process: :func:`start_hold_expiry` is
called from the application's lifespan, once per worker process.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import APIRouter, Body, Depends, Request
from pydantic import AwareDatetime, BaseModel, Field, StrictStr
from starlette.responses import Response

from walletd.domain.records import Hold, Transaction
from walletd.entrypoints.http import render
from walletd.entrypoints.http.deps import (
    AdminPrincipal,
    OptionalKey,
    ReadPrincipal,
    RequiredKey,
    Services,
    ServicesDep,
    WritePrincipal,
    path_uuid,
)
from walletd.entrypoints.http.idempotent import json_response, run_idempotent
from walletd.entrypoints.http.schemas import (
    NUL_FREE,
    Amount,
    Currency,
    RequestModel,
    TransactionPublic,
)
from walletd.service_layer.holds import HoldAnswer, HoldExpirer, HoldService
from walletd.service_layer.idempotency import IdempotentRequest
from walletd.service_layer.reversals import ReversalService

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


def hold_service(services: ServicesDep) -> HoldService:
    """The process's :class:`HoldService`, created on first use."""
    service = services.extras.get("holds")
    if service is None:
        service = HoldService(services.database, services.engine)
        services.extras["holds"] = service
    assert isinstance(service, HoldService)
    return service


def reversal_service(services: ServicesDep) -> ReversalService:
    service = services.extras.get("reversals")
    if service is None:
        service = ReversalService(services.database)
        services.extras["reversals"] = service
    assert isinstance(service, ReversalService)
    return service


HoldsDep = Annotated[HoldService, Depends(hold_service)]
ReversalsDep = Annotated[ReversalService, Depends(reversal_service)]


def start_hold_expiry(services: Services) -> HoldExpirer:
    """Start this process's expiry loop; the caller stops it with ``await .stop()``."""
    expirer = HoldExpirer(hold_service(services), services.settings.hold_expiry_interval_seconds)
    expirer.start()
    return expirer


def _hold_answer(status: int) -> HoldAnswer:
    def answer(hold: Hold) -> tuple[int, bytes]:
        return status, render.dumps(render.hold_json(hold))

    return answer


def _transaction_answer(transaction: Transaction) -> tuple[int, bytes]:
    return 201, render.dumps(render.transaction_json(transaction))


@router.post("/holds", status_code=201, response_model=HoldPublic, responses=PROBLEM_RESPONSES)
async def create_hold(
    request: Request,
    body: HoldCreate,
    principal: WritePrincipal,
    key: RequiredKey,
    services: ServicesDep,
    holds: HoldsDep,
) -> Response:
    async def execute(idempotent: IdempotentRequest | None) -> Response:
        hold = await holds.place(
            principal.tenant_id,
            wallet_id=body.wallet_id,
            amount=body.amount,
            currency=body.currency,
            expires_at=body.expires_at,
            request=idempotent,
            answer=_hold_answer(201),
        )
        return json_response(201, render.dumps(render.hold_json(hold)))

    return await run_idempotent(
        request, services, principal.tenant_id, key, body.model_dump(mode="json"), execute
    )


@router.get("/holds/{hold_id}", response_model=HoldPublic, responses=PROBLEM_RESPONSES)
async def get_hold(hold_id: str, principal: ReadPrincipal, holds: HoldsDep) -> Response:
    hold = await holds.get(principal.tenant_id, path_uuid(hold_id, "hold"))
    return json_response(200, render.dumps(render.hold_json(hold)))


@router.post("/holds/{hold_id}/capture", response_model=HoldPublic, responses=PROBLEM_RESPONSES)
async def capture_hold(
    request: Request,
    hold_id: str,
    principal: WritePrincipal,
    key: RequiredKey,
    services: ServicesDep,
    holds: HoldsDep,
    body: Annotated[HoldCapture | None, Body()] = None,
) -> Response:
    wanted = path_uuid(hold_id, "hold")
    capture = body or HoldCapture()

    async def execute(idempotent: IdempotentRequest | None) -> Response:
        hold = await holds.capture(
            principal.tenant_id,
            wanted,
            amount=capture.amount,
            to_wallet_id=capture.to_wallet_id,
            request=idempotent,
            answer=_hold_answer(200),
        )
        return json_response(200, render.dumps(render.hold_json(hold)))

    return await run_idempotent(
        request, services, principal.tenant_id, key, capture.model_dump(mode="json"), execute
    )


@router.post("/holds/{hold_id}/void", response_model=HoldPublic, responses=PROBLEM_RESPONSES)
async def void_hold(
    request: Request,
    hold_id: str,
    principal: WritePrincipal,
    key: OptionalKey,
    services: ServicesDep,
    holds: HoldsDep,
) -> Response:
    wanted = path_uuid(hold_id, "hold")

    async def execute(idempotent: IdempotentRequest | None) -> Response:
        hold = await holds.void(
            principal.tenant_id, wanted, request=idempotent, answer=_hold_answer(200)
        )
        return json_response(200, render.dumps(render.hold_json(hold)))

    return await run_idempotent(request, services, principal.tenant_id, key, None, execute)


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
    reversals: ReversalsDep,
    body: Annotated[ReverseBody | None, Body()] = None,
) -> Response:
    wanted = path_uuid(transaction_id, "transaction")
    reverse = body or ReverseBody()

    async def execute(idempotent: IdempotentRequest | None) -> Response:
        reversal = await reversals.reverse(
            principal,
            wanted,
            reason=reverse.reason,
            request=idempotent,
            answer=_transaction_answer,
        )
        return json_response(*_transaction_answer(reversal))

    return await run_idempotent(
        request, services, principal.tenant_id, key, reverse.model_dump(mode="json"), execute
    )

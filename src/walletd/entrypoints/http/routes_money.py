"""Money endpoints: credits, debits, transfers, batches, and reading a transaction."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from uuid import UUID

from fastapi import APIRouter
from pydantic import BaseModel
from starlette.responses import Response

from walletd.domain.book import ItemFailure, Outcome
from walletd.domain.commands import Credit, Debit, PostingCommand, Transfer
from walletd.domain.records import Transaction
from walletd.entrypoints.bootstrap import Services
from walletd.entrypoints.http import render
from walletd.entrypoints.http.commands import created_status, outcome_json, render_one, submit
from walletd.entrypoints.http.deps import (
    ReadPrincipal,
    RequiredKey,
    ServicesDep,
    WritePrincipal,
    path_uuid,
)
from walletd.entrypoints.http.idempotent import json_response
from walletd.entrypoints.http.problems import IDEMPOTENT_RESPONSES, error_body
from walletd.entrypoints.http.schemas import (
    BatchAtomicPublic,
    BatchResultsPublic,
    CreditCreate,
    DebitCreate,
    TransactionPublic,
    TransferBatchCreate,
    TransferCreate,
)

router = APIRouter(prefix="/v1")

PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = IDEMPOTENT_RESPONSES
REVIEW_RESPONSES: dict[int | str, dict[str, Any]] = {
    202: {"model": TransactionPublic, "description": "Sent to review: status pending_review"},
    **PROBLEM_RESPONSES,
}


def render_atomic_batch(outcomes: Sequence[Outcome]) -> tuple[int, bytes]:
    failures = [outcome for outcome in outcomes if isinstance(outcome, ItemFailure)]
    if failures:
        failure = failures[0]
        return failure.error.status, render.dumps(error_body(failure.error, index=failure.index))
    transactions = [o for o in outcomes if isinstance(o, Transaction)]
    status = max((created_status(tx) for tx in transactions), default=201)
    return status, render.dumps({"data": [render.transaction_json(tx) for tx in transactions]})


def render_item_batch(outcomes: Sequence[Outcome]) -> tuple[int, bytes]:
    items = []
    for index, outcome in enumerate(outcomes):
        status, body = outcome_json(outcome)
        failed = isinstance(outcome, ItemFailure)
        items.append(
            {
                "index": index,
                "status": status,
                "transaction": None if failed else body,
                "error": body if failed else None,
            }
        )
    return 200, render.dumps({"data": items})


BATCH_PATH = "/v1/transfers/batch"
PostingHandler = Callable[[Services, UUID, str, Any], Awaitable[Response]]


def _single(path: str, command: Callable[[Any], PostingCommand]) -> PostingHandler:
    """What serves a validated single-posting body at ``path`` (route and lean path)."""

    async def handler(services: Services, tenant_id: UUID, key: str, body: Any) -> Response:
        return await submit(
            services,
            tenant_id,
            key,
            ("POST", path),
            body.model_dump(mode="json"),
            [command(body)],
            render_one(),
        )

    return handler


def _transfer(body: TransferCreate) -> Transfer:
    return Transfer(
        body.from_wallet_id,
        body.to_wallet_id,
        body.amount,
        body.currency,
        body.reference,
        body.metadata,
    )


post_credit = _single(
    "/v1/credits",
    lambda body: Credit(body.wallet_id, body.amount, body.currency, body.reference, body.metadata),
)
post_debit = _single(
    "/v1/debits",
    lambda body: Debit(body.wallet_id, body.amount, body.currency, body.reference, body.metadata),
)
post_transfer = _single("/v1/transfers", _transfer)


@router.post(
    "/credits", status_code=201, response_model=TransactionPublic, responses=PROBLEM_RESPONSES
)
async def credit(
    body: CreditCreate,
    principal: WritePrincipal,
    key: RequiredKey,
    services: ServicesDep,
) -> Response:
    return await post_credit(services, principal.tenant_id, key, body)


@router.post(
    "/debits", status_code=201, response_model=TransactionPublic, responses=REVIEW_RESPONSES
)
async def debit(
    body: DebitCreate,
    principal: WritePrincipal,
    key: RequiredKey,
    services: ServicesDep,
) -> Response:
    return await post_debit(services, principal.tenant_id, key, body)


@router.post(
    "/transfers", status_code=201, response_model=TransactionPublic, responses=REVIEW_RESPONSES
)
async def transfer(
    body: TransferCreate,
    principal: WritePrincipal,
    key: RequiredKey,
    services: ServicesDep,
) -> Response:
    return await post_transfer(services, principal.tenant_id, key, body)


@router.post(
    "/transfers/batch",
    status_code=201,
    response_model=BatchAtomicPublic,
    responses={
        200: {"model": BatchResultsPublic},
        202: {"model": BatchAtomicPublic, "description": "Atomic, some items sent to review"},
        **PROBLEM_RESPONSES,
    },
)
async def transfer_batch(
    body: TransferBatchCreate,
    principal: WritePrincipal,
    key: RequiredKey,
    services: ServicesDep,
) -> Response:
    return await post_batch(services, principal.tenant_id, key, body)


async def post_batch(
    services: Services, tenant_id: UUID, key: str, body: TransferBatchCreate
) -> Response:
    """POST /v1/transfers/batch with a validated ``body`` (the route and the lean path)."""
    commands: list[PostingCommand] = [_transfer(item) for item in body.transfers]
    renderer = render_atomic_batch if body.atomic else render_item_batch
    return await submit(
        services,
        tenant_id,
        key,
        ("POST", BATCH_PATH),
        body.model_dump(mode="json"),
        commands,
        renderer,
        atomic=body.atomic,
    )


@router.get("/transactions/{transaction_id}", response_model=TransactionPublic)
async def get_transaction(
    transaction_id: str, principal: ReadPrincipal, services: ServicesDep
) -> Response:
    found = await services.queries.transaction(
        principal.tenant_id, path_uuid(transaction_id, "transaction")
    )
    return json_response(200, render.dumps(render.transaction_json(found)))


# Every posting route: its body model and what serves a validated body. The routes
# above and the lean path (:mod:`walletd.entrypoints.http.lean`) both run these.
POSTINGS: dict[str, tuple[type[BaseModel], PostingHandler]] = {
    "/v1/credits": (CreditCreate, post_credit),
    "/v1/debits": (DebitCreate, post_debit),
    "/v1/transfers": (TransferCreate, post_transfer),
    BATCH_PATH: (TransferBatchCreate, post_batch),
}

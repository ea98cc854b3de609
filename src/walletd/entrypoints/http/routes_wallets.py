"""Wallet endpoints: open, read, list, freeze/unfreeze/close, limits, entries, balances.

Opening a wallet needs an ``Idempotency-Key``; freeze, unfreeze and close accept one,
and then run once for it like every keyed POST (:mod:`walletd.entrypoints.http.idempotent`).
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Request
from starlette.responses import Response, StreamingResponse

from walletd.domain.ledger import Limits
from walletd.domain.records import Wallet
from walletd.entrypoints.bootstrap import Services
from walletd.entrypoints.http import cursors, render
from walletd.entrypoints.http.deps import (
    AdminPrincipal,
    OptionalKey,
    ReadPrincipal,
    RequiredKey,
    ServicesDep,
    WritePrincipal,
    path_uuid,
)
from walletd.entrypoints.http.idempotent import json_response, run_idempotent
from walletd.entrypoints.http.problems import IDEMPOTENT_RESPONSES
from walletd.entrypoints.http.schemas import (
    BalancePublic,
    EntryList,
    LimitsUpdate,
    ReasonBody,
    StatementPublic,
    WalletCreate,
    WalletList,
    WalletPublic,
)
from walletd.errors import ValidationFailed
from walletd.service_layer.idempotency import IdempotentRequest
from walletd.service_layer.queries import Statement
from walletd.service_layer.tenants import Principal

router = APIRouter(prefix="/v1")
Limit = Annotated[int, Query(ge=1, le=500)]
# RFC 3339 timestamps; documented as such, parsed by cursors.parse_timestamp (else 422).
TIMESTAMP: dict[str, Any] = {"format": "date-time"}


@router.post(
    "/wallets", status_code=201, response_model=WalletPublic, responses=IDEMPOTENT_RESPONSES
)
async def create_wallet(
    request: Request,
    body: WalletCreate,
    principal: WritePrincipal,
    key: RequiredKey,
    services: ServicesDep,
) -> Response:
    async def execute(idempotent: IdempotentRequest | None) -> Response:
        wallet = await services.wallets.create(
            principal.tenant_id,
            currency=body.currency,
            owner_id=body.owner_id,
            overdraft_limit=body.overdraft_limit,
            metadata=body.metadata,
            request=idempotent,
            answer=lambda created: (201, render.dumps(render.wallet_json(created))),
        )
        return json_response(201, render.dumps(render.wallet_json(wallet)))

    return await run_idempotent(
        request, services, principal.tenant_id, key, body.model_dump(mode="json"), execute
    )


@router.get("/wallets/{wallet_id}", response_model=WalletPublic)
async def get_wallet(wallet_id: str, principal: ReadPrincipal, services: ServicesDep) -> Response:
    wallet = await services.wallets.get(principal.tenant_id, path_uuid(wallet_id, "wallet"))
    return json_response(200, render.dumps(render.wallet_json(wallet)))


@router.get("/wallets", response_model=WalletList)
async def list_wallets(
    principal: ReadPrincipal,
    services: ServicesDep,
    owner_id: str | None = None,
    limit: Limit = 50,
    cursor: str | None = None,
) -> Response:
    if owner_id is not None and ("\x00" in owner_id or len(owner_id) > 255):
        raise ValidationFailed("owner_id: at most 255 characters, no NUL")
    after = cursors.wallet_cursor(cursor)
    wallets = await services.wallets.list(principal.tenant_id, owner_id, after, limit + 1)
    next_cursor = None
    if len(wallets) > limit:
        last = wallets[limit - 1]
        next_cursor = cursors.encode([render.timestamp(last.created_at), str(last.id)])
    body = {"data": [render.wallet_json(w) for w in wallets[:limit]], "next_cursor": next_cursor}
    return json_response(200, render.dumps(body))


async def _status_action(
    request: Request,
    action: str,
    wallet_id: str,
    body: ReasonBody | None,
    principal: Principal,
    services: Services,
    key: str | None,
) -> Response:
    """Freeze, unfreeze or close, run once per ``Idempotency-Key`` when one is sent."""
    wanted = path_uuid(wallet_id, "wallet")
    reason = body or ReasonBody()  # no body is the empty body: {"reason": null}

    def answer(wallet: Wallet) -> tuple[int, bytes]:
        return 200, render.dumps(render.wallet_json(wallet))

    async def execute(idempotent: IdempotentRequest | None) -> Response:
        wallet = await services.wallets.change_status(
            principal, wanted, action, reason.reason, request=idempotent, answer=answer
        )
        return json_response(*answer(wallet))

    fingerprint = reason.model_dump(mode="json")
    return await run_idempotent(request, services, principal.tenant_id, key, fingerprint, execute)


@router.post(
    "/wallets/{wallet_id}/freeze", response_model=WalletPublic, responses=IDEMPOTENT_RESPONSES
)
async def freeze_wallet(
    request: Request,
    wallet_id: str,
    principal: AdminPrincipal,
    services: ServicesDep,
    key: OptionalKey,
    body: Annotated[ReasonBody | None, Body()] = None,
) -> Response:
    return await _status_action(request, "freeze", wallet_id, body, principal, services, key)


@router.post(
    "/wallets/{wallet_id}/unfreeze", response_model=WalletPublic, responses=IDEMPOTENT_RESPONSES
)
async def unfreeze_wallet(
    request: Request,
    wallet_id: str,
    principal: AdminPrincipal,
    services: ServicesDep,
    key: OptionalKey,
    body: Annotated[ReasonBody | None, Body()] = None,
) -> Response:
    return await _status_action(request, "unfreeze", wallet_id, body, principal, services, key)


@router.post(
    "/wallets/{wallet_id}/close", response_model=WalletPublic, responses=IDEMPOTENT_RESPONSES
)
async def close_wallet(
    request: Request,
    wallet_id: str,
    principal: AdminPrincipal,
    services: ServicesDep,
    key: OptionalKey,
    body: Annotated[ReasonBody | None, Body()] = None,
) -> Response:
    return await _status_action(request, "close", wallet_id, body, principal, services, key)


@router.put("/wallets/{wallet_id}/limits", response_model=WalletPublic)
async def put_limits(
    wallet_id: str, body: LimitsUpdate, principal: AdminPrincipal, services: ServicesDep
) -> Response:
    limits = Limits(body.max_debit_amount, body.daily_debit_amount, body.max_debits_per_minute)
    wallet = await services.wallets.set_limits(principal, path_uuid(wallet_id, "wallet"), limits)
    return json_response(200, render.dumps(render.wallet_json(wallet)))


@router.get("/wallets/{wallet_id}/entries", response_model=EntryList)
async def list_entries(
    wallet_id: str,
    principal: ReadPrincipal,
    services: ServicesDep,
    from_: Annotated[str | None, Query(alias="from", json_schema_extra=TIMESTAMP)] = None,
    to: Annotated[str | None, Query(json_schema_extra=TIMESTAMP)] = None,
    limit: Limit = 50,
    cursor: str | None = None,
) -> Response:
    start, end = cursors.optional_timestamp(from_, "from"), cursors.optional_timestamp(to, "to")
    after_version = cursors.version_cursor(cursor)
    entries = await services.queries.entries(
        principal.tenant_id, path_uuid(wallet_id, "wallet"), after_version, start, end, limit + 1
    )
    next_cursor = None
    if len(entries) > limit:
        next_cursor = cursors.encode({"v": entries[limit - 1].wallet_version})
    body = {"data": [render.entry_json(e) for e in entries[:limit]], "next_cursor": next_cursor}
    return json_response(200, render.dumps(body))


@router.get("/wallets/{wallet_id}/balance", response_model=BalancePublic)
async def balance_at(
    wallet_id: str,
    principal: ReadPrincipal,
    services: ServicesDep,
    at: Annotated[str, Query(json_schema_extra=TIMESTAMP)],
) -> Response:
    moment = cursors.parse_timestamp(at, "at")
    wanted = path_uuid(wallet_id, "wallet")
    currency, balance, version = await services.queries.balance_at(
        principal.tenant_id, wanted, moment
    )
    body = {
        "wallet_id": str(wanted),
        "currency": currency,
        "balance": balance,
        "wallet_version": version,
        "at": render.timestamp(moment),
    }
    return json_response(200, render.dumps(body))


def _statement_json(statement: Statement) -> dict[str, Any]:
    next_cursor = None
    if statement.next_version is not None:
        next_cursor = cursors.encode({"v": statement.next_version})
    return {
        "wallet_id": str(statement.wallet.id),
        "currency": statement.wallet.currency,
        "from": render.timestamp(statement.start),
        "to": render.timestamp(statement.end),
        "opening_balance": statement.opening_balance,
        "closing_balance": statement.closing_balance,
        "total_credits": statement.total_credits,
        "total_debits": statement.total_debits,
        "entries": [render.entry_json(entry) for entry in statement.entries],
        "next_cursor": next_cursor,
    }


CSV_COLUMNS = (
    "id",
    "transaction_id",
    "wallet_id",
    "amount",
    "balance_after",
    "wallet_version",
    "created_at",
)


@router.get(
    "/wallets/{wallet_id}/statement",
    response_model=StatementPublic,
    responses={200: {"content": {"text/csv": {}}}},
)
async def statement(
    request: Request,
    wallet_id: str,
    principal: ReadPrincipal,
    services: ServicesDep,
    from_: Annotated[str | None, Query(alias="from", json_schema_extra=TIMESTAMP)] = None,
    to: Annotated[str | None, Query(json_schema_extra=TIMESTAMP)] = None,
    cursor: str | None = None,
) -> Response:
    start, end = cursors.optional_timestamp(from_, "from"), cursors.optional_timestamp(to, "to")
    wanted = path_uuid(wallet_id, "wallet")
    after_version = cursors.version_cursor(cursor)
    result = await services.queries.statement(
        principal.tenant_id, wanted, start, end, after_version
    )
    if "text/csv" not in request.headers.get("accept", ""):
        return json_response(200, render.dumps(_statement_json(result)))
    rows = services.queries.stream_entries(principal.tenant_id, wanted, start, result.end)
    headers = {
        "X-Opening-Balance": str(result.opening_balance),
        "X-Closing-Balance": str(result.closing_balance),
        "X-Total-Credits": str(result.total_credits),
        "X-Total-Debits": str(result.total_debits),
    }
    return StreamingResponse(_csv_lines(rows), media_type="text/csv", headers=headers)


async def _csv_lines(entries: AsyncIterator[Any]) -> AsyncIterator[str]:
    """Plain CSV: a header row, then one row per entry; totals travel in X-* headers."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    yield buffer.getvalue()
    async for entry in entries:
        buffer.seek(0)
        buffer.truncate()
        writer.writerow(
            [
                entry.id,
                entry.transaction_id,
                entry.wallet_id,
                entry.amount,
                entry.balance_after,
                entry.wallet_version,
                render.timestamp(entry.created_at),
            ]
        )
        yield buffer.getvalue()

"""Admin endpoints: risk rules, the review queue, and the admin audit log.

Every endpoint needs the ``admin`` scope. Approve and reject accept an optional
``Idempotency-Key``; their answer is stored in the same database transaction as the
decision.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Query, Request
from starlette.responses import Response

from walletd.adapters import admin_log
from walletd.domain.commands import DecideReview
from walletd.domain.records import Transaction
from walletd.domain.risk import RiskRule, rules_json
from walletd.entrypoints.bootstrap import Services
from walletd.entrypoints.http import cursors, render
from walletd.entrypoints.http.commands import render_one, submit
from walletd.entrypoints.http.deps import AdminPrincipal, OptionalKey, ServicesDep, path_uuid
from walletd.entrypoints.http.idempotent import json_response
from walletd.entrypoints.http.schemas import ReasonBody, TransactionPublic
from walletd.entrypoints.http.schemas_admin import (
    AuditLogList,
    ReviewList,
    RiskRulesPublic,
    RiskRulesPut,
)
from walletd.errors import ValidationFailed
from walletd.service_layer.tenants import Principal

router = APIRouter(prefix="/v1")
Decision = Literal["approve", "reject"]
Limit = Annotated[int, Query(ge=1, le=500)]
PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    422: {"description": "Validation or business rule error (problem+json)"},
}


def _rules_body(rules: tuple[RiskRule, ...]) -> bytes:
    return render.dumps({"rules": rules_json(rules)})


@router.get("/risk-rules", response_model=RiskRulesPublic)
async def get_risk_rules(principal: AdminPrincipal, services: ServicesDep) -> Response:
    rules = await services.risk_rules.get(principal.tenant_id)
    return json_response(200, _rules_body(rules))


@router.put("/risk-rules", response_model=RiskRulesPublic, responses=PROBLEM_RESPONSES)
async def put_risk_rules(
    body: RiskRulesPut, principal: AdminPrincipal, services: ServicesDep
) -> Response:
    raw = [rule.model_dump(mode="json") for rule in body.rules]
    rules = await services.risk_rules.replace(principal, raw)
    return json_response(200, _rules_body(rules))


def review_json(transaction: Transaction) -> dict[str, Any]:
    to_wallet = transaction.to_wallet_id
    return {
        **render.transaction_json(transaction),
        "from_wallet_id": str(transaction.from_wallet_id),
        "to_wallet_id": str(to_wallet) if to_wallet else None,
        "review_rule": transaction.review_rule,
    }


@router.get("/reviews", response_model=ReviewList)
async def list_reviews(
    principal: AdminPrincipal,
    services: ServicesDep,
    limit: Limit = 50,
    cursor: str | None = None,
) -> Response:
    """Pending reviews, oldest first."""
    after = cursors.wallet_cursor(cursor)
    pending = await services.queries.pending_reviews(principal.tenant_id, after, limit + 1)
    next_cursor = None
    if len(pending) > limit:
        last = pending[limit - 1]
        next_cursor = cursors.encode([render.timestamp(last.created_at), str(last.id)])
    body = {"data": [review_json(tx) for tx in pending[:limit]], "next_cursor": next_cursor}
    return json_response(200, render.dumps(body))


async def _decide(
    request: Request,
    transaction_id: str,
    decision: Decision,
    body: ReasonBody | None,
    principal: Principal,
    services: Services,
    key: str | None,
) -> Response:
    reason = body.reason if body else None
    command = DecideReview(
        path_uuid(transaction_id, "transaction"), decision, principal.key_id, reason
    )
    return await submit(
        services,
        principal.tenant_id,
        key,
        ("POST", request.url.path),
        (body or ReasonBody()).model_dump(mode="json"),  # no body and {} are one request
        [command],
        render_one(status=200),
    )


@router.post(
    "/reviews/{transaction_id}/approve",
    response_model=TransactionPublic,
    responses=PROBLEM_RESPONSES,
)
async def approve_review(
    request: Request,
    transaction_id: str,
    principal: AdminPrincipal,
    services: ServicesDep,
    key: OptionalKey,
    body: Annotated[ReasonBody | None, Body()] = None,
) -> Response:
    return await _decide(request, transaction_id, "approve", body, principal, services, key)


@router.post(
    "/reviews/{transaction_id}/reject",
    response_model=TransactionPublic,
    responses=PROBLEM_RESPONSES,
)
async def reject_review(
    request: Request,
    transaction_id: str,
    principal: AdminPrincipal,
    services: ServicesDep,
    key: OptionalKey,
    body: Annotated[ReasonBody | None, Body()] = None,
) -> Response:
    return await _decide(request, transaction_id, "reject", body, principal, services, key)


def _audit_cursor(cursor: str | None) -> int | None:
    """The id below which the next page starts (the log is read newest first)."""
    if cursor is None:
        return None
    value = cursors.decode(cursor)
    if not isinstance(value, dict) or type(value.get("id")) is not int or value["id"] < 1:
        raise ValidationFailed("cursor: not a cursor this API returned")
    before_id: int = value["id"]
    return before_id


def _audit_item(row: Any) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "key_id": str(row["key_id"]) if row["key_id"] else None,
        "action": row["action"],
        "target_type": row["target_type"],
        "target_id": row["target_id"],
        "before": row["before"],
        "after": row["after"],
        "created_at": render.timestamp(row["created_at"]),
    }


@router.get("/audit-log", response_model=AuditLogList)
async def list_audit_log(
    principal: AdminPrincipal,
    services: ServicesDep,
    limit: Limit = 50,
    cursor: str | None = None,
) -> Response:
    """The tenant's admin actions, newest first (a read model: no service layer needed)."""
    before_id = _audit_cursor(cursor)
    async with services.database.connection() as connection:
        rows = await admin_log.list_actions(connection, principal.tenant_id, before_id, limit + 1)
    next_cursor = cursors.encode({"id": rows[limit - 1]["id"]}) if len(rows) > limit else None
    body = {"data": [_audit_item(row) for row in rows[:limit]], "next_cursor": next_cursor}
    return json_response(200, render.dumps(body))

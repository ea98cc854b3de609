"""Serving a command over HTTP: the one way a route gives the engine work.

A route validates its body, builds the commands (:mod:`walletd.domain.commands`) and
calls :func:`submit` with a renderer. The engine stores the rendered answer under the
request's ``Idempotency-Key`` in the same database transaction as the change — failures
of the ledger's rules included — and the very bytes stored are the bytes sent.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any
from uuid import UUID

from starlette.responses import Response

from walletd.domain.book import Captured, ItemFailure, Outcome
from walletd.domain.commands import Command
from walletd.domain.records import Hold, Transaction
from walletd.entrypoints.bootstrap import Services
from walletd.entrypoints.http import render
from walletd.entrypoints.http.idempotent import json_response, run_idempotent_at
from walletd.entrypoints.http.problems import error_body
from walletd.service_layer.idempotency import IdempotentRequest, request_fingerprint

Answer = tuple[int, bytes]
Renderer = Callable[[Sequence[Outcome]], Answer]


def created_status(transaction: Transaction) -> int:
    """201 when posted; 202 when a risk rule sent it to review (funds held, not moved)."""
    return 202 if transaction.status == "pending_review" else 201


def outcome_json(outcome: Outcome) -> tuple[int, dict[str, Any]]:
    """The status and body of one command's outcome (201/202 for new transactions)."""
    if isinstance(outcome, ItemFailure):
        return outcome.error.status, error_body(outcome.error)
    if isinstance(outcome, Captured):
        status = 202 if outcome.transaction.status == "pending_review" else 200
        return status, render.hold_json(outcome.hold)
    if isinstance(outcome, Hold):
        return 200, render.hold_json(outcome)
    return created_status(outcome), render.transaction_json(outcome)


def render_one(*, status: int | None = None) -> Renderer:
    """One command's answer; ``status`` replaces the success status (201 for a new hold)."""

    def answer(outcomes: Sequence[Outcome]) -> Answer:
        (outcome,) = outcomes
        code, body = outcome_json(outcome)
        if status is not None and not isinstance(outcome, ItemFailure):
            code = status
        return code, render.dumps(body)

    return answer


class _Memo:
    """Renders each outcome once: the bytes stored under the key are the bytes sent.

    A group transaction that failed as a whole is retried request by request with new
    ids, so the memo is keyed by the outcomes object: only the answer for the outcomes
    finally committed (the very list the engine returns) is ever sent.
    """

    def __init__(self, renderer: Renderer) -> None:
        self._renderer = renderer
        self._outcomes: Sequence[Outcome] | None = None
        self._answer: Answer = (500, b"")

    def __call__(self, outcomes: Sequence[Outcome]) -> Answer:
        if outcomes is not self._outcomes:
            self._outcomes, self._answer = outcomes, self._renderer(outcomes)
        return self._answer


async def submit(
    services: Services,
    tenant_id: UUID,
    key: str | None,
    where: tuple[str, str],
    body: Any,
    commands: Sequence[Command],
    renderer: Renderer,
    *,
    atomic: bool = True,
) -> Response:
    """Run ``commands`` as one request at ``where`` (method, path) under ``key``."""

    async def execute(idempotent: IdempotentRequest | None) -> Response:
        memo = _Memo(renderer)
        outcomes = await services.engine.post(
            tenant_id,
            commands,
            atomic=atomic,
            request=idempotent,
            render=memo if idempotent is not None else None,
        )
        return json_response(*memo(outcomes))

    if key is None:
        return await execute(None)
    method, path = where
    # Hashed now and dropped: the JSON form of a batch (1,000 dicts) is not kept while
    # the request waits for its group.
    fingerprint = request_fingerprint(method, path, body)
    del body
    return await run_idempotent_at(method, path, services, tenant_id, key, fingerprint, execute)

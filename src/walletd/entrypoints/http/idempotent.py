"""Running a request under its ``Idempotency-Key``: execute once, replay afterwards.

``execute`` stores its answer under the key in the same database transaction as its
change, and returns exactly the bytes it stored. A key already bound answers with the
stored status and body (and ``Idempotent-Replayed: true``) when method, path and
canonical body match, else 422 ``idempotency_key_reused``. Business failures (404/422
raised while executing) are stored too, in a transaction of their own; 400/401/403/
429/503 are not, and schema-validation 422s never reach this module.

Redis, when configured, answers first (:mod:`walletd.service_layer.idempotency_cache`):
a cached answer is replayed without touching PostgreSQL, and a key locked by a request
still running gets 409 ``idempotency_key_in_use``. When Redis cannot answer, the
request is marked to claim its key in PostgreSQL instead. See docs/idempotency.md.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any
from uuid import UUID

import structlog
from fastapi import Request
from starlette.responses import Response

from walletd.entrypoints.bootstrap import Services
from walletd.entrypoints.http.problems import PROBLEM_MEDIA_TYPE, error_body
from walletd.entrypoints.http.render import dumps
from walletd.errors import IdempotencyKeyInUse, IdempotencyKeyReused, WalletdError
from walletd.service_layer.idempotency import (
    DuplicateKey,
    IdempotentRequest,
    StoredAnswer,
    load_answer,
    request_fingerprint,
    store_answer,
)
from walletd.service_layer.idempotency_cache import (
    OUTCOMES,
    UNAVAILABLE_CLAIM,
    Claim,
    ClaimOutcome,
    IdempotencyCache,
)

Execute = Callable[[IdempotentRequest | None], Awaitable[Response]]
STORED_FAILURE_STATUSES = frozenset({404, 422})

logger = structlog.get_logger("walletd.idempotency")


def json_response(status: int, body: bytes, *, replayed: bool = False) -> Response:
    media_type = PROBLEM_MEDIA_TYPE if status >= 400 else "application/json"
    headers = {"Idempotent-Replayed": "true"} if replayed else None
    return Response(body, status_code=status, media_type=media_type, headers=headers)


def replay(stored: StoredAnswer, request: IdempotentRequest) -> Response:
    if (stored.method, stored.path, stored.request_hash) != (
        request.method,
        request.path,
        request.request_hash,
    ):
        OUTCOMES.labels("reused").inc()
        raise IdempotencyKeyReused(
            "this Idempotency-Key was used for a different request; use a new key"
        )
    return json_response(stored.status_code, stored.body, replayed=True)


async def run_idempotent(
    http_request: Request,
    services: Services,
    tenant_id: UUID,
    key: str | None,
    body: Any,
    execute: Execute,
) -> Response:
    """Run ``execute`` once for ``key``; see the module docstring."""
    if key is None:
        return await execute(None)
    method, path = http_request.method, http_request.url.path
    fingerprint = request_fingerprint(method, path, body)
    return await run_idempotent_at(method, path, services, tenant_id, key, fingerprint, execute)


async def run_idempotent_at(
    method: str,
    path: str,
    services: Services,
    tenant_id: UUID,
    key: str,
    fingerprint: bytes,
    execute: Execute,
) -> Response:
    """:func:`run_idempotent` for a caller that has the method, path and fingerprint
    (:func:`request_fingerprint`) at hand."""
    request = IdempotentRequest(key, method, path, fingerprint)
    cache = services.idempotency_cache
    claim = UNAVAILABLE_CLAIM if cache is None else await cache.claim(tenant_id, request)
    if claim.outcome is ClaimOutcome.REPLAY:
        assert claim.answer is not None
        response = replay(claim.answer, request)
        OUTCOMES.labels("replayed_redis").inc()
        return response
    if claim.outcome is ClaimOutcome.IN_USE:
        return await _answer_in_use(services, cache, tenant_id, request)
    if claim.outcome is ClaimOutcome.UNAVAILABLE:
        request = dataclasses.replace(request, claim_in_database=True)
    answer: tuple[int, bytes] | None = None
    try:
        response = await _execute_or_replay(services, tenant_id, request, execute)
        answer = _answer(response)
    finally:
        # Also on failure: a lock we hold is released now rather than at its TTL. The
        # answer is in PostgreSQL already, so the client need not wait for Redis.
        if cache is not None:
            cache.finish(tenant_id, request, claim, answer)
    return response


async def _execute_or_replay(
    services: Services, tenant_id: UUID, request: IdempotentRequest, execute: Execute
) -> Response:
    """The answer PostgreSQL holds for the key once this returns (raises when none)."""
    try:
        response = await _execute(services, tenant_id, request, execute)
    except DuplicateKey:
        return await _replay_from_database(services, tenant_id, request)
    OUTCOMES.labels("executed").inc()
    return response


async def _execute(
    services: Services, tenant_id: UUID, request: IdempotentRequest, execute: Execute
) -> Response:
    try:
        return await execute(request)
    except WalletdError as error:
        if error.status not in STORED_FAILURE_STATUSES or isinstance(error, IdempotencyKeyReused):
            raise
        body = dumps(error_body(error))
        async with services.database.unit_of_work() as uow:
            await store_answer(uow.connection, tenant_id, request.row(error.status, body))
            await uow.commit()
        return json_response(error.status, body)  # the very bytes stored


async def _replay_from_database(
    services: Services, tenant_id: UUID, request: IdempotentRequest
) -> Response:
    async with services.database.connection() as connection:
        stored = await load_answer(connection, tenant_id, request.key)
    if stored is None:
        OUTCOMES.labels("in_use").inc()
        raise IdempotencyKeyInUse("the first request with this key has not finished; retry")
    response = replay(stored, request)
    OUTCOMES.labels("replayed_database").inc()
    return response


async def _answer_in_use(
    services: Services,
    cache: IdempotencyCache | None,
    tenant_id: UUID,
    request: IdempotentRequest,
) -> Response:
    """Redis says another request holds the key: replay if it already committed, else 409.

    One primary-key read, never a posting: it covers a first request that committed
    but could not cache its answer or release its lock (crash, Redis blip).
    """
    response = await _replay_from_database(services, tenant_id, request)
    if cache is not None:
        cache.finish(tenant_id, request, Claim(ClaimOutcome.IN_USE), _answer(response))
    return response


def _answer(response: Response) -> tuple[int, bytes]:
    return response.status_code, bytes(response.body)

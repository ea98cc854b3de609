"""Running a request under its ``Idempotency-Key``: execute once, replay afterwards.

``execute`` stores its answer under the key in the same database transaction as its
change. A key already bound answers with the stored status and body (and
``Idempotent-Replayed: true``) when method, path and canonical body match, else 422
``idempotency_key_reused``. Business failures (404/422 raised while executing) are
stored too, in a transaction of their own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from uuid import UUID

from fastapi import Request
from starlette.responses import Response

from walletd.entrypoints.http.problems import PROBLEM_MEDIA_TYPE, error_body, error_response
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

Execute = Callable[[IdempotentRequest | None], Awaitable[Response]]
STORED_FAILURE_STATUSES = frozenset({404, 422})


def json_response(status: int, body: bytes, *, replayed: bool = False) -> Response:
    media_type = PROBLEM_MEDIA_TYPE if status >= 400 else "application/json"
    headers = {"Idempotent-Replayed": "true"} if replayed else None
    return Response(body, status_code=status, media_type=media_type, headers=headers)


def replay(stored: StoredAnswer, request: IdempotentRequest) -> Response:
    if (stored.method, stored.path, stored.request_hash) != (
        request.method, request.path, request.request_hash
    ):
        raise IdempotencyKeyReused(
            "this Idempotency-Key was used for a different request; use a new key"
        )
    return json_response(stored.status_code, stored.body, replayed=True)


async def run_idempotent(
    http_request: Request,
    services: Any,
    tenant_id: UUID,
    key: str | None,
    body: Any,
    execute: Execute,
) -> Response:
    """Run ``execute`` once for ``key``; see the module docstring."""
    if key is None:
        return await execute(None)
    method, path = http_request.method, http_request.url.path
    request = IdempotentRequest(key, method, path, request_fingerprint(method, path, body))
    cache = services.extras.get("idempotency_cache")
    if cache is not None:
        cached = await cache.lookup(tenant_id, request)
        if cached is not None:
            return replay(cached, request)
    try:
        response = await _execute(services, tenant_id, request, execute)
    except DuplicateKey:
        response = await _replay_from_database(services, tenant_id, request)
    if cache is not None:
        await cache.remember(tenant_id, request, response)
    return response


async def _execute(
    services: Any, tenant_id: UUID, request: IdempotentRequest, execute: Execute
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
        return error_response(error)


async def _replay_from_database(
    services: Any, tenant_id: UUID, request: IdempotentRequest
) -> Response:
    async with services.database.connection() as connection:
        stored = await load_answer(connection, tenant_id, request.key)
    if stored is None:
        raise IdempotencyKeyInUse("the first request with this key has not finished; retry")
    return replay(stored, request)
